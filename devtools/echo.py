"""A bare grpc.aio server answering grpc.health.v1.Health/Check, with nothing of cloudimg in it: the baseline
`make bench` measures every call against (what one Python process of grpc.aio does per call on this machine).

    python -m devtools.echo 127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def serve(addr: str) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(addr)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().rsplit("\n", 1)[-1].strip())
    asyncio.run(serve(sys.argv[1]))
