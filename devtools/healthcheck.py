"""Container health check: exit 0 when the server at HOST:PORT reports SERVING, else 1.

Asks grpc.health.v1 Health/Check for the overall service "" with a 2 s deadline, so images need no
grpc_health_probe binary:  python -m devtools.healthcheck 127.0.0.1:50051
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 2.0


def check(address: str, timeout: float = TIMEOUT_SECONDS) -> str:
    """The overall serving status's name, or the gRPC status code's name when the call fails."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.healthcheck", description=__doc__)
    parser.add_argument("address", help="HOST:PORT of a gRPC server")
    args = parser.parse_args(argv)
    status = check(args.address)
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
