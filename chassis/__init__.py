"""The chassis: what every cloudimg service needs once.

Server start-up and graceful shutdown, health and reflection, the interceptor that authenticates
callers and turns domain exceptions into rich gRPC statuses, settings, logs, the database engine and
unit of work, and the channels to downstream services. Nothing here knows about images or prices.
"""
