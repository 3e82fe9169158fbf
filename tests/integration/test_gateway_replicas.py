"""Client tokens across gateway replicas: real processes sharing one gateway database, on SQLite and
PostgreSQL. Racing calls with one token, spread over the replicas, launch once and are charged once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cloudimg.gateway.v1 import instance_service_pb2 as pb
from cloudimg.gateway.v1 import instance_service_pb2_grpc as pb_grpc
from sqlalchemy import Table, create_engine, func, select

from billing_service.adapters.tables import CHARGES
from catalog_service.domain.seed import seed_image_id
from devtools.stack import wait_serving
from gateway.adapters.tables import INSTANCES, LAUNCHES
from tests.conftest import Spawn

GZ = "ap-guangzhou"


def count(url: str, table: Table) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(select(func.count()).select_from(table)).scalar_one()
    engine.dispose()
    return found


def demo_key(gateway_url: str) -> str:
    out = subprocess.run([sys.executable, "-m", "gateway", "demo-accounts"], check=True, capture_output=True,
                         env={"GATEWAY_DATABASE_URL": gateway_url, "PATH": "/usr/bin:/bin"})
    key = json.loads(out.stdout)["alice"]["api_key"]
    assert isinstance(key, str), key
    return key


async def race_one_token_over_replicas(spawn: Spawn, urls: dict[str, str]) -> None:
    internal = {name: spawn(name, {f"{name.upper()}_DATABASE_URL": urls[name]}, wait=False)
                for name in ("catalog", "sharing", "billing")}
    key = demo_key(urls["gateway"])
    downstreams = {f"{name.upper()}_ADDR": process.addr for name, process in internal.items()}
    replicas = [spawn("gateway", {"GATEWAY_DATABASE_URL": urls["gateway"], **downstreams}, wait=False)
                for _ in range(2)]
    for process in [*internal.values(), *replicas]:
        wait_serving(process.addr, 60)
    gateways = [process.addr for process in replicas]
    stubs = [pb_grpc.InstanceServiceStub(grpc.aio.insecure_channel(addr)) for addr in gateways]
    request = pb.RunInstancesRequest(region=GZ, image_id=seed_image_id(GZ, "ubuntu-2204-x86"),
                                     instance_type="S5.MEDIUM4", instance_count=4, client_token="replicated-1")
    metadata = (("authorization", f"Bearer {key}"),)
    results = await asyncio.gather(*(stubs[n % 2].RunInstances(request, metadata=metadata, timeout=30)
                                     for n in range(30)))
    assert len({tuple(r.instance_ids) for r in results}) == 1
    assert count(urls["gateway"], LAUNCHES) == 1
    assert count(urls["gateway"], INSTANCES) == 4
    assert count(urls["billing"], CHARGES) == 1


async def test_one_token_over_two_replicas_on_sqlite(spawn: Spawn, tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in ("catalog", "sharing", "billing", "gateway")}
    await race_one_token_over_replicas(spawn, urls)


@pytest.mark.postgres
async def test_one_token_over_two_replicas_on_postgres(spawn: Spawn,
                                                      postgres_database: Callable[[], str], tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in ("catalog", "sharing")}
    urls.update(billing=postgres_database(), gateway=postgres_database())
    await race_one_token_over_replicas(spawn, urls)
