"""What the gateway's durable operations share: who holds their jobs, and for how long a call holds one.

A launch, a termination and a reset each write a job (chassis.jobs) in the transaction that starts them,
held by the call that does the work, for HOLD. The call that finishes its work finishes the job in the same
transaction; a call that cannot (a dependency is down) gives the job up at once; a call that dies leaves it
due when the hold ends. Then a worker on any replica finishes it (gateway.service_layer.background).
"""

from __future__ import annotations

from datetime import timedelta

from chassis import jobs

# How long the call that starts an operation holds its job: longer than any call's deadline.
HOLD = timedelta(seconds=10)
# Who holds this process's jobs: those of the operations its calls run, and those its worker finishes.
REPLICA = jobs.new_owner("gateway")
