"""The gateway's schema upgrade keeps what older releases wrote: instances from before they had a lifecycle
(no update or terminate time) are read, listed and terminated on the new code, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import text

import gateway
from chassis.db import Database
from chassis.migrations import config
from gateway.adapters.tables import TABLES
from gateway.bootstrap import open_database
from gateway.domain.instances import InstanceState

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def test_instances_written_before_the_lifecycle_are_read_and_terminated_after_the_upgrade(database_url: str) -> None:
    db = Database(database_url)
    with db.engine.begin() as connection:
        command.upgrade(config(Path(gateway.__file__).parent, "gateway", connection), "0002")
        connection.execute(text(
            "INSERT INTO gateway_instance (instance_id, account_id, region, instance_name, instance_type, image_id, "
            "state, charge_type, system_disk_gb, architecture, launch_id, create_time) VALUES ('ins-old00001', "
            "'100000000001', 'ap-guangzhou', 'old', 'S5.MEDIUM4', 'img-00000001', 'RUNNING', 'POSTPAID_BY_HOUR', "
            "50, 'X86_64', 'lch-old00001', :now)"), {"now": NOW})
    db.dispose()
    upgraded, new_uow = open_database(database_url)  # migrates to head, as a start-up does
    assert {t.name for t in TABLES} >= {"gateway_request", "gateway_instance"}
    with new_uow() as uow:
        old = uow.instances.get("100000000001", "ins-old00001")
        assert old is not None
        assert old.update_time == NOW
        assert old.terminate_time is None
        uow.instances.terminate(["ins-old00001"], NOW.replace(hour=12))
        uow.commit()
    with new_uow(read_only=True) as uow:
        ended = uow.instances.get("100000000001", "ins-old00001")
    assert ended is not None
    assert ended.state is InstanceState.TERMINATED
    assert ended.terminate_time == ended.update_time == NOW.replace(hour=12)
    upgraded.dispose()
