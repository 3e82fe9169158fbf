"""The gateway's rows, with SQLAlchemy Core, handed back as domain objects."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, delete, exists, select, update

from chassis import jobs
from chassis.db import insert_ignoring_duplicates
from gateway.adapters.tables import ACCOUNTS, API_KEYS, INSTANCES, LAUNCH_JOBS, LAUNCHES
from gateway.domain.api_keys import Account, ApiKey
from gateway.domain.model import (
    Architecture, ChargeType, Instance, InstanceState, Launch, LaunchRequest, LaunchState, OsType, Quote, QuoteLine,
)


# The job that settles a launch its call could not settle; one per launch, keyed by the launch id.
SETTLE_LAUNCH = "settle-launch"


def settle_job_id(launch_id: str) -> str:
    return f"settle-{launch_id}"


class AccountRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def add_missing(self, accounts: Iterable[Account], now: datetime) -> None:
        values = [{"account_id": a.account_id, "display_name": a.display_name, "create_time": now} for a in accounts]
        if values:
            self._connection.execute(insert_ignoring_duplicates(self._connection, ACCOUNTS), values)

    def existing(self, account_ids: Iterable[str]) -> set[str]:
        wanted = ACCOUNTS.c.account_id.in_(list(account_ids))
        rows = self._connection.execute(select(ACCOUNTS.c.account_id).where(wanted))
        return {r[0] for r in rows}

    def get(self, account_id: str) -> Account | None:
        row = self._connection.execute(select(ACCOUNTS).where(ACCOUNTS.c.account_id == account_id)).first()
        return None if row is None else Account(row.account_id, row.display_name)

    def key(self, key_id: str) -> ApiKey | None:
        row = self._connection.execute(select(API_KEYS).where(API_KEYS.c.key_id == key_id)).first()
        return None if row is None else ApiKey(row.key_id, row.account_id, row.secret_hash)

    def replace_keys(self, account_id: str, key: ApiKey, now: datetime) -> None:
        """Revokes the account's keys and issues this one."""
        self._connection.execute(delete(API_KEYS).where(API_KEYS.c.account_id == account_id))
        self._connection.execute(API_KEYS.insert().values(key_id=key.key_id, account_id=account_id,
                                                    secret_hash=key.secret_hash, create_time=now))


def _instance_row(i: Instance) -> dict[str, object]:
    row = dataclasses.asdict(i)
    row.update(state=i.state.value, charge_type=i.charge_type.value, architecture=i.architecture.value)
    return row


def _to_instance(row: object) -> Instance:
    m = row._mapping  # type: ignore[attr-defined]
    return Instance(m["instance_id"], m["account_id"], m["region"], m["instance_name"], m["instance_type"],
                    m["image_id"], InstanceState(m["state"]), ChargeType(m["charge_type"]), m["system_disk_gb"],
                    Architecture(m["architecture"]), m["launch_id"], m["create_time"])


class InstanceRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def add(self, instances: list[Instance]) -> None:
        self._connection.execute(INSTANCES.insert(), [_instance_row(i) for i in instances])

    def get(self, account_id: str, instance_id: str) -> Instance | None:
        row = self._connection.execute(select(INSTANCES).where(
            INSTANCES.c.instance_id == instance_id, INSTANCES.c.account_id == account_id)).first()
        return None if row is None else _to_instance(row)

    def page(self, account_id: str, region: str, after: str | None, limit: int) -> list[Instance]:
        c = INSTANCES.c
        statement = select(INSTANCES).where(c.account_id == account_id)
        if region:
            statement = statement.where(c.region == region)
        if after is not None:
            statement = statement.where(c.instance_id > after)
        return [_to_instance(r) for r in self._connection.execute(statement.order_by(c.instance_id).limit(limit))]


def _quote_json(quote: Quote) -> str:
    return json.dumps({
        "currency": quote.currency, "charge_type": quote.charge_type.value, "total": str(quote.total),
        "image_allowed": quote.image_allowed,
        "lines": [{"kind": l.kind, "description": l.description, "unit_price": str(l.unit_price),
                   "quantity": l.quantity, "unit": l.unit, "amount": str(l.amount)} for l in quote.lines],
    })


def _quote_of(raw: str) -> Quote:
    q = json.loads(raw)
    lines = tuple(QuoteLine(l["kind"], l["description"], Decimal(l["unit_price"]), l["quantity"], l["unit"],
                            Decimal(l["amount"])) for l in q["lines"])
    return Quote(q["currency"], ChargeType(q["charge_type"]), lines, Decimal(q["total"]), q["image_allowed"])


def _request_json(launch: Launch) -> str:
    request = dataclasses.asdict(launch.request)
    request["charge_type"] = launch.request.charge_type.value
    return json.dumps({"request": request, "image_os_type": launch.image_os_type.value,
                       "image_architecture": launch.image_architecture.value,
                       "marketplace_product_id": launch.marketplace_product_id,
                       "image_allowed": launch.image_allowed})


def _to_launch(row: object) -> Launch:
    m = row._mapping  # type: ignore[attr-defined]
    stored = json.loads(m["request"])
    request = LaunchRequest(**{**stored["request"], "charge_type": ChargeType(stored["request"]["charge_type"])})
    return Launch(
        launch_id=m["launch_id"], account_id=m["account_id"], client_token=m["client_token"],
        fingerprint=m["fingerprint"], state=LaunchState(m["state"]), request=request,
        image_os_type=OsType(stored["image_os_type"]), image_architecture=Architecture(stored["image_architecture"]),
        marketplace_product_id=stored["marketplace_product_id"], image_allowed=stored["image_allowed"],
        instance_ids=json.loads(m["instance_ids"]),
        create_time=m["create_time"], quote=_quote_of(m["quote"]) if m["quote"] else None, charge_id=m["charge_id"],
    )


class LaunchRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def claim(self, launch: Launch, holder: str, hold_until: datetime) -> bool:
        """Records a PENDING launch with its PENDING instances, and the job that settles it, held by
        ``holder`` (the call) until ``hold_until``: if the call dies, the job is due then. False (and
        nothing written) when the account's client token is already taken. Writing the instances here,
        before anything is charged, means that finishing a charged launch only flips states: it cannot
        fail on its data."""
        statement = insert_ignoring_duplicates(self._connection, LAUNCHES).values(
            launch_id=launch.launch_id, account_id=launch.account_id, client_token=launch.client_token,
            fingerprint=launch.fingerprint, state=launch.state.value, request=_request_json(launch),
            instance_ids=json.dumps(launch.instance_ids), create_time=launch.create_time,
        ).returning(LAUNCHES.c.launch_id)
        if self._connection.execute(statement).first() is None:
            return False
        self._connection.execute(INSTANCES.insert(), [_instance_row(i) for i in launch.instances()])
        jobs.enqueue(self._connection, LAUNCH_JOBS, SETTLE_LAUNCH, launch.launch_id, {}, launch.create_time,
                     job_id=settle_job_id(launch.launch_id), lease_owner=holder, lease_until=hold_until)
        return True

    def by_token(self, account_id: str, client_token: str) -> Launch | None:
        row = self._connection.execute(select(LAUNCHES).where(
            LAUNCHES.c.account_id == account_id, LAUNCHES.c.client_token == client_token)).first()
        return None if row is None else _to_launch(row)

    def complete(self, launch: Launch, quote: Quote, charge_id: str, now: datetime) -> bool:
        """Marks an unsettled launch DONE, its instances RUNNING and its job done; False when it is
        settled already."""
        result = self._connection.execute(update(LAUNCHES).where(
            LAUNCHES.c.launch_id == launch.launch_id, LAUNCHES.c.state.in_(_UNSETTLED),
        ).values(state=LaunchState.DONE.value, quote=_quote_json(quote), charge_id=charge_id))
        if result.rowcount != 1:
            return False
        running = self._connection.execute(update(INSTANCES).where(
            INSTANCES.c.launch_id == launch.launch_id, INSTANCES.c.state == InstanceState.PENDING.value,
        ).values(state=InstanceState.RUNNING.value))
        if running.rowcount == 0:  # claimed by an older gateway, which wrote no instances at claim time
            self._connection.execute(INSTANCES.insert(), [
                _instance_row(replace(i, state=InstanceState.RUNNING)) for i in launch.instances()])
        jobs.finish(self._connection, LAUNCH_JOBS, settle_job_id(launch.launch_id), now)
        return True

    def mark_in_doubt(self, launch_id: str, holder: str, now: datetime) -> None:
        """Marks a PENDING launch IN_DOUBT; its job, if ``holder`` (its call) still holds it, is due at once."""
        marked = self._connection.execute(update(LAUNCHES).where(
            LAUNCHES.c.launch_id == launch_id, LAUNCHES.c.state == LaunchState.PENDING.value,
        ).values(state=LaunchState.IN_DOUBT.value))
        if marked.rowcount:
            jobs.release_hold(self._connection, LAUNCH_JOBS, settle_job_id(launch_id), holder, now)

    def forget(self, launch_id: str, now: datetime) -> None:
        """Drops an unsettled launch that was never charged, with its instances, freeing its client token;
        its job is done."""
        deleted = self._connection.execute(delete(LAUNCHES).where(
            LAUNCHES.c.launch_id == launch_id, LAUNCHES.c.state.in_(_UNSETTLED)))
        if deleted.rowcount:
            self._connection.execute(delete(INSTANCES).where(
                INSTANCES.c.launch_id == launch_id, INSTANCES.c.state == InstanceState.PENDING.value))
            jobs.finish(self._connection, LAUNCH_JOBS, settle_job_id(launch_id), now)

    def add_missing_jobs(self, stale_after: timedelta, now: datetime) -> int:
        """Gives each unsettled launch without a job (claimed by a gateway from before the jobs) its
        job: due at once if it is IN_DOUBT, once its call is over (``stale_after``) if it is PENDING.
        Enqueuing is idempotent, so replicas starting together add each job once. How many it found."""
        c = LAUNCHES.c
        orphans = self._connection.execute(select(c.launch_id, c.state, c.create_time).where(
            c.state.in_(_UNSETTLED),
            ~exists().where(LAUNCH_JOBS.c.subject == c.launch_id, LAUNCH_JOBS.c.kind == SETTLE_LAUNCH),
        )).all()
        for orphan in orphans:
            created = orphan.create_time if orphan.create_time.tzinfo else orphan.create_time.replace(tzinfo=UTC)
            due = None if orphan.state == LaunchState.IN_DOUBT.value else max(now, created + stale_after)
            jobs.enqueue(self._connection, LAUNCH_JOBS, SETTLE_LAUNCH, orphan.launch_id, {}, now,
                         job_id=settle_job_id(orphan.launch_id), lease_until=due)
        return len(orphans)

    def get(self, launch_id: str) -> Launch | None:
        row = self._connection.execute(select(LAUNCHES).where(LAUNCHES.c.launch_id == launch_id)).first()
        return None if row is None else _to_launch(row)


_UNSETTLED = (LaunchState.PENDING.value, LaunchState.IN_DOUBT.value)
