"""The gateway's rows, with SQLAlchemy Core, handed back as domain objects."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, select, update

from chassis import jobs
from chassis.db import bulk_insert, ignoring_insert, insert_ignoring_duplicates
from chassis.idempotency import ResponseFormat
from chassis.stored import Document
from gateway.adapters.tables import ACCOUNTS, API_KEYS, INSTANCES, JOBS, LAUNCHES
from gateway.domain.api_keys import Account, ApiKey
from gateway.domain.instances import Instance, InstanceState, Launch, LaunchRequest, LaunchState, Reset
from gateway.domain.model import Architecture, ChargeType, OsType, Quote, QuoteLine, QuoteLineKind

# The job that settles a launch its call could not settle; one per launch, keyed by the launch id.
SETTLE_LAUNCH = "settle-launch"
# The job that ends the usage of terminated instances at billing; one per TerminateInstances that terminated any.
END_USAGE = "end-usage"
# The job that finishes a reset (charges it at billing, then the instance runs the new image); one per reset.
RESET_INSTANCE = "reset-instance"


def settle_job_id(launch_id: str) -> str:
    return f"settle-{launch_id}"


def reset_job_id(reset_id: str) -> str:
    return f"reset-{reset_id}"


def _utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive (they are stored in UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)




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


_INSTANCE_COLUMNS = ("instance_id", "account_id", "region", "instance_name", "instance_type", "image_id", "state",
                     "charge_type", "system_disk_gb", "architecture", "launch_id", "create_time", "update_time",
                     "terminate_time")


def _instance_values(i: Instance) -> tuple[object, ...]:
    """The row of an instance in _INSTANCE_COLUMNS' order, field by field (dataclasses.asdict deep-copies:
    a quarter of a 100-instance launch's time)."""
    return (i.instance_id, i.account_id, i.region, i.instance_name, i.instance_type, i.image_id, i.state.value,
            i.charge_type.value, i.system_disk_gb, i.architecture.value, i.launch_id, _utc(i.create_time),
            _utc(i.update_time or i.create_time), None if i.terminate_time is None else _utc(i.terminate_time))


def _add_instances(connection: Connection, instances: Iterable[Instance]) -> None:
    bulk_insert(connection, INSTANCES, _INSTANCE_COLUMNS, (_instance_values(i) for i in instances))


def _launch_rows(launch: Launch) -> list[tuple[object, ...]]:
    """The rows of ``launch.instances()`` (as _instance_values makes them), without making the instances: all
    but the id and the default name are the launch's, computed once."""
    r, created = launch.request, _utc(launch.create_time)
    pending, charge_type, architecture = (InstanceState.PENDING.value, r.charge_type.value,
                                          launch.image_architecture.value)
    return [(instance_id, launch.account_id, r.region, r.instance_name or instance_id, r.instance_type, r.image_id,
             pending, charge_type, r.system_disk_gb, architecture, launch.launch_id, created, created, None)
            for instance_id in launch.instance_ids]


def _to_instance(row: object) -> Instance:
    m = row._mapping  # type: ignore[attr-defined]
    created = _utc(m["create_time"])
    return Instance(m["instance_id"], m["account_id"], m["region"], m["instance_name"], m["instance_type"],
                    m["image_id"], InstanceState(m["state"]), ChargeType(m["charge_type"]), m["system_disk_gb"],
                    Architecture(m["architecture"]), m["launch_id"], created,
                    _utc(m["update_time"]) if m["update_time"] else created,
                    _utc(m["terminate_time"]) if m["terminate_time"] else None)


# The states from which an instance can be reset.
_RESETTABLE = (InstanceState.RUNNING.value, InstanceState.STOPPED.value)


class InstanceRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def add(self, instances: list[Instance]) -> None:
        _add_instances(self._connection, instances)

    def get(self, account_id: str, instance_id: str) -> Instance | None:
        row = self._connection.execute(select(INSTANCES).where(
            INSTANCES.c.instance_id == instance_id, INSTANCES.c.account_id == account_id)).first()
        return None if row is None else _to_instance(row)

    def lock_many(self, account_id: str, instance_ids: Collection[str]) -> dict[str, Instance]:
        """The account's instances among these ids, locked until the transaction ends (a row lock on
        PostgreSQL; SQLite's BEGIN IMMEDIATE already runs writers one at a time)."""
        c = INSTANCES.c
        rows = self._connection.execute(select(INSTANCES).where(
            c.account_id == account_id, c.instance_id.in_(list(instance_ids))).with_for_update())
        return {i.instance_id: i for i in map(_to_instance, rows)}

    def page(self, account_id: str, region: str, states: Collection[InstanceState], after: str | None,
             limit: int) -> list[Instance]:
        c = INSTANCES.c
        statement = select(INSTANCES).where(c.account_id == account_id)
        if region:
            statement = statement.where(c.region == region)
        if states:
            statement = statement.where(c.state.in_(sorted(s.value for s in states)))
        if after is not None:
            statement = statement.where(c.instance_id > after)
        return [_to_instance(r) for r in self._connection.execute(statement.order_by(c.instance_id).limit(limit))]

    def terminate(self, instance_ids: list[str], now: datetime) -> None:
        """Marks instances locked by ``lock_many`` TERMINATED."""
        if instance_ids:
            self._connection.execute(update(INSTANCES).where(INSTANCES.c.instance_id.in_(instance_ids)).values(
                state=InstanceState.TERMINATED.value, update_time=_utc(now), terminate_time=_utc(now)))

    def start_reset(self, instance_id: str, now: datetime) -> bool:
        """RUNNING (or STOPPED) → RESETTING; False when the instance is in no state to be reset."""
        started = self._connection.execute(update(INSTANCES).where(
            INSTANCES.c.instance_id == instance_id, INSTANCES.c.state.in_(_RESETTABLE),
        ).values(state=InstanceState.RESETTING.value, update_time=_utc(now)))
        return started.rowcount == 1

    def end_reset(self, instance_id: str, image_id: str | None, now: datetime) -> bool:
        """RESETTING → RUNNING the new image (or, with None, the image it ran before: the reset is undone);
        False when the instance is not RESETTING (the reset was finished already)."""
        values: dict[str, object] = {"state": InstanceState.RUNNING.value, "update_time": _utc(now)}
        if image_id is not None:
            values["image_id"] = image_id
        ended = self._connection.execute(update(INSTANCES).where(
            INSTANCES.c.instance_id == instance_id, INSTANCES.c.state == InstanceState.RESETTING.value,
        ).values(**values))
        return ended.rowcount == 1


def _unversioned_quote_to_1(q: dict[str, Any]) -> dict[str, Any]:
    """Version 0, the unversioned quote (up to this change): the fields of version 1 without ``"v"``. Every
    release wrote ``image_allowed``; a quote without it is read as allowed, which is what the gateway answered
    before it had a verdict to report (a quote's default). Line kinds were billing's ``LINE_KIND_`` names
    without the prefix before 8fe2015, the same strings as QuoteLineKind's values."""
    return {"image_allowed": True, **q}


# A launch's quote (the launch row's ``quote`` column, and inside a ResetInstance answer). Version 1:
# currency, charge_type, total, image_allowed, and lines of kind, description, unit_price, quantity, unit, amount.
QUOTE = Document("quote", 1, upgrades={0: _unversioned_quote_to_1})


def quote_to_json(quote: Quote) -> dict[str, Any]:
    return QUOTE.dump({
        "currency": quote.currency, "charge_type": quote.charge_type.value, "total": str(quote.total),
        "image_allowed": quote.image_allowed,
        "lines": [{"kind": l.kind.value, "description": l.description, "unit_price": str(l.unit_price),
                   "quantity": l.quantity, "unit": l.unit, "amount": str(l.amount)} for l in quote.lines],
    })


def quote_from_json(stored: Any) -> Quote:
    """The one decoder of stored quotes, of any version."""
    q = QUOTE.load(stored)
    lines = tuple(QuoteLine(QuoteLineKind(l["kind"]), l["description"], Decimal(l["unit_price"]), l["quantity"],
                            l["unit"], Decimal(l["amount"])) for l in q["lines"])
    return Quote(q["currency"], ChargeType(q["charge_type"]), lines, Decimal(q["total"]), q["image_allowed"])


def _unversioned_launch_request_to_1(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 0, the unversioned launch request: ``request`` (LaunchRequest's fields by name, charge_type by
    value), image_os_type, image_architecture and marketplace_product_id; image_allowed only from 432bc98 on.
    A launch recorded before 432bc98 was claimed only after the launch checks of its time passed, and that
    release answered its replays with the quote's default verdict: allowed, so image_allowed defaults to True."""
    return {"image_allowed": True, **stored}


# The launch row's ``request`` column: what a launch asked for and what it saw of its image, so that its call,
# a retry or its job can finish it. Version 1: the fields of version 0, image_allowed always present.
LAUNCH_REQUEST = Document("launch request", 1, upgrades={0: _unversioned_launch_request_to_1})


def _request_json(launch: Launch) -> str:
    r = launch.request
    return LAUNCH_REQUEST.dumps({
        "request": {"region": r.region, "image_id": r.image_id, "instance_type": r.instance_type,
                    "instance_count": r.instance_count, "charge_type": r.charge_type.value,
                    "period_months": r.period_months, "system_disk_gb": r.system_disk_gb,
                    "instance_name": r.instance_name, "client_token": r.client_token},
        "image_os_type": launch.image_os_type.value, "image_architecture": launch.image_architecture.value,
        "marketplace_product_id": launch.marketplace_product_id, "image_allowed": launch.image_allowed})


def _to_launch(row: object) -> Launch:
    m = row._mapping  # type: ignore[attr-defined]
    stored = LAUNCH_REQUEST.loads(m["request"])
    r = stored["request"]
    request = LaunchRequest(region=r["region"], image_id=r["image_id"], instance_type=r["instance_type"],
                            instance_count=r["instance_count"], charge_type=ChargeType(r["charge_type"]),
                            period_months=r["period_months"], system_disk_gb=r["system_disk_gb"],
                            instance_name=r["instance_name"], client_token=r["client_token"])
    return Launch(
        launch_id=m["launch_id"], account_id=m["account_id"], client_token=m["client_token"],
        fingerprint=m["fingerprint"], state=LaunchState(m["state"]), request=request,
        image_os_type=OsType(stored["image_os_type"]), image_architecture=Architecture(stored["image_architecture"]),
        marketplace_product_id=stored["marketplace_product_id"], image_allowed=stored["image_allowed"],
        # A plain JSON array of instance ids in every release: a value, not a document with a schema.
        instance_ids=json.loads(m["instance_ids"]),
        create_time=m["create_time"], quote=quote_from_json(json.loads(m["quote"])) if m["quote"] else None,
        charge_id=m["charge_id"],
    )


_UNSETTLED = (LaunchState.PENDING.value, LaunchState.IN_DOUBT.value)
# A launch's finish, built once: a charged launch DONE, its PENDING instances RUNNING.
_COMPLETE_LAUNCH = update(LAUNCHES).where(
    LAUNCHES.c.launch_id == bindparam("launch"), LAUNCHES.c.state.in_(_UNSETTLED),
).values(state=LaunchState.DONE.value, quote=bindparam("quote"), charge_id=bindparam("charge"))
_RUN_INSTANCES = update(INSTANCES).where(
    INSTANCES.c.launch_id == bindparam("launch"), INSTANCES.c.state == InstanceState.PENDING.value,
).values(state=InstanceState.RUNNING.value, update_time=bindparam("now"))


class LaunchRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def claim(self, launch: Launch, holder: str, hold_until: datetime) -> bool:
        """Records a PENDING launch with its PENDING instances, and the job that settles it, held by
        ``holder`` (the call) until ``hold_until``: if the call dies, the job is due then. False (and
        nothing written) when the account's client token is already taken. Writing the instances here,
        before anything is charged, means that finishing a charged launch only flips states: it cannot
        fail on its data."""
        claimed = self._connection.execute(ignoring_insert(self._connection, LAUNCHES, "launch_id"), {
            "launch_id": launch.launch_id, "account_id": launch.account_id, "client_token": launch.client_token,
            "fingerprint": launch.fingerprint, "state": launch.state.value, "request": _request_json(launch),
            "instance_ids": json.dumps(launch.instance_ids), "create_time": launch.create_time,
        }).first()
        if claimed is None:
            return False
        bulk_insert(self._connection, INSTANCES, _INSTANCE_COLUMNS, _launch_rows(launch))
        jobs.enqueue(self._connection, JOBS, SETTLE_LAUNCH, launch.launch_id, {}, launch.create_time,
                     job_id=settle_job_id(launch.launch_id), lease_owner=holder, lease_until=hold_until)
        return True

    def by_token(self, account_id: str, client_token: str) -> Launch | None:
        row = self._connection.execute(select(LAUNCHES).where(
            LAUNCHES.c.account_id == account_id, LAUNCHES.c.client_token == client_token)).first()
        return None if row is None else _to_launch(row)

    def complete(self, launch: Launch, quote: Quote, charge_id: str, now: datetime) -> bool:
        """Marks an unsettled launch DONE, its instances RUNNING and its job done; False when it is
        settled already."""
        result = self._connection.execute(_COMPLETE_LAUNCH, {
            "launch": launch.launch_id, "quote": json.dumps(quote_to_json(quote)), "charge": charge_id})
        if result.rowcount != 1:
            return False
        running = self._connection.execute(_RUN_INSTANCES, {"launch": launch.launch_id, "now": _utc(now)})
        if running.rowcount == 0:  # claimed by an older gateway, which wrote no instances at claim time
            _add_instances(self._connection, (replace(i, state=InstanceState.RUNNING, update_time=_utc(now))
                                              for i in launch.instances()))
        jobs.finish(self._connection, JOBS, settle_job_id(launch.launch_id), now)
        return True

    def mark_in_doubt(self, launch_id: str, holder: str, now: datetime) -> None:
        """Marks a PENDING launch IN_DOUBT; its job, if ``holder`` (its call) still holds it, is due at once."""
        marked = self._connection.execute(update(LAUNCHES).where(
            LAUNCHES.c.launch_id == launch_id, LAUNCHES.c.state == LaunchState.PENDING.value,
        ).values(state=LaunchState.IN_DOUBT.value))
        if marked.rowcount:
            jobs.release_hold(self._connection, JOBS, settle_job_id(launch_id), holder, now)

    def forget(self, launch_id: str, now: datetime) -> None:
        """Drops an unsettled launch that was never charged, with its instances, freeing its client token;
        its job is done."""
        deleted = self._connection.execute(delete(LAUNCHES).where(
            LAUNCHES.c.launch_id == launch_id, LAUNCHES.c.state.in_(_UNSETTLED)))
        if deleted.rowcount:
            self._connection.execute(delete(INSTANCES).where(
                INSTANCES.c.launch_id == launch_id, INSTANCES.c.state == InstanceState.PENDING.value))
            jobs.finish(self._connection, JOBS, settle_job_id(launch_id), now)

    def add_missing_jobs(self, stale_after: timedelta, now: datetime) -> int:
        """Gives each unsettled launch without a job (claimed by a gateway from before the jobs) its
        job: due at once if it is IN_DOUBT, once its call is over (``stale_after``) if it is PENDING.
        Enqueuing is idempotent, so replicas starting together add each job once. How many it found."""
        c = LAUNCHES.c
        orphans = self._connection.execute(select(c.launch_id, c.state, c.create_time).where(
            c.state.in_(_UNSETTLED),
            ~exists().where(JOBS.c.subject == c.launch_id, JOBS.c.kind == SETTLE_LAUNCH),
        )).all()
        for orphan in orphans:
            created = orphan.create_time if orphan.create_time.tzinfo else orphan.create_time.replace(tzinfo=UTC)
            due = None if orphan.state == LaunchState.IN_DOUBT.value else max(now, created + stale_after)
            jobs.enqueue(self._connection, JOBS, SETTLE_LAUNCH, orphan.launch_id, {}, now,
                         job_id=settle_job_id(orphan.launch_id), lease_until=due)
        return len(orphans)

    def get(self, launch_id: str) -> Launch | None:
        row = self._connection.execute(select(LAUNCHES).where(LAUNCHES.c.launch_id == launch_id)).first()
        return None if row is None else _to_launch(row)



def _time_json(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat()


def _time_of(stored: str | None) -> datetime | None:
    return None if stored is None else _utc(datetime.fromisoformat(stored))


def _instances_to_json(instances: list[Instance]) -> list[dict[str, Any]]:
    return [{**dict(zip(_INSTANCE_COLUMNS, _instance_values(i), strict=True)), "create_time": _time_json(i.create_time),
             "update_time": _time_json(i.update_time),
             "terminate_time": _time_json(i.terminate_time)} for i in instances]


def _instances_from_json(stored: Any) -> list[Instance]:
    return [Instance(i["instance_id"], i["account_id"], i["region"], i["instance_name"], i["instance_type"],
                     i["image_id"], InstanceState(i["state"]), ChargeType(i["charge_type"]), i["system_disk_gb"],
                     Architecture(i["architecture"]), i["launch_id"], _utc(datetime.fromisoformat(i["create_time"])),
                     _time_of(i["update_time"]), _time_of(i["terminate_time"])) for i in stored]


# What TerminateInstances answered: the instances, TERMINATED. Version 1 (the first): a list of instances, their
# fields by name, times in ISO 8601.
INSTANCES_ANSWER = ResponseFormat.of(Document("TerminateInstances answer", 1), encode=_instances_to_json,
                                     decode=_instances_from_json)


@dataclass(frozen=True)
class ResetAnswer:
    """What ResetInstance answered by request_id: the reset it started and the price it quoted."""

    reset_id: str
    instance_id: str
    quote: Quote


def _reset_answer_to_json(answer: ResetAnswer) -> dict[str, Any]:
    return {"reset_id": answer.reset_id, "instance_id": answer.instance_id, "quote": quote_to_json(answer.quote)}


def _reset_answer_from_json(stored: Any) -> ResetAnswer:
    return ResetAnswer(stored["reset_id"], stored["instance_id"], quote_from_json(stored["quote"]))


# What ResetInstance answered. Version 1 (the first): reset_id, instance_id and the quote, a document of its own
# (unversioned, i.e. version 0, in the answers kept before quotes carried a version).
RESET_ANSWER = ResponseFormat.of(Document("ResetInstance answer", 1), encode=_reset_answer_to_json,
                                 decode=_reset_answer_from_json)


def _unversioned_reset_job_to_1(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 0, the reset job's data as 8fe2015 wrote it (the job table versioned only its envelope): the
    fields of version 1; only the version is new."""
    return stored


# A reset job's data (inside the job table's envelope). Version 1: reset_id, account_id, instance_id, region,
# instance_type, charge_type, period_months, launch_time, image_id, image_os_type, marketplace_product_id and
# effective_time (times in ISO 8601).
RESET_JOB = Document("reset job", 1, upgrades={0: _unversioned_reset_job_to_1})


def reset_to_json(reset: Reset) -> dict[str, Any]:
    """A reset as its job's data."""
    return RESET_JOB.dump({
        "reset_id": reset.reset_id, "account_id": reset.account_id, "instance_id": reset.instance_id,
        "region": reset.region, "instance_type": reset.instance_type, "charge_type": reset.charge_type.value,
        "period_months": reset.period_months, "launch_time": _time_json(reset.launch_time),
        "image_id": reset.image_id, "image_os_type": reset.image_os_type.value,
        "marketplace_product_id": reset.marketplace_product_id, "effective_time": _time_json(reset.effective_time),
    })


def reset_from_json(data: dict[str, Any]) -> Reset:
    """The one decoder of a reset job's data, of any version."""
    stored = RESET_JOB.load(data)
    return Reset(stored["reset_id"], stored["account_id"], stored["instance_id"], stored["region"],
                 stored["instance_type"], ChargeType(stored["charge_type"]), stored["period_months"],
                 _utc(datetime.fromisoformat(stored["launch_time"])), stored["image_id"],
                 OsType(stored["image_os_type"]), stored["marketplace_product_id"],
                 _utc(datetime.fromisoformat(stored["effective_time"])))


@dataclass(frozen=True)
class EndUsage:
    """What an end-usage job tells billing: the account's terminated instances and when their usage ended."""

    account_id: str
    instance_ids: list[str]
    end_time: datetime


def _unversioned_end_usage_job_to_1(stored: dict[str, Any]) -> dict[str, Any]:
    """Version 0, the end-usage job's data as 8fe2015 wrote it (the job table versioned only its envelope):
    account_id, instance_ids and end_time (ISO 8601), the fields of version 1; only the version is new."""
    return stored


# An end-usage job's data (inside the job table's envelope). Version 1: account_id, instance_ids (a list of
# instance ids) and end_time (ISO 8601).
END_USAGE_JOB = Document("end-usage job", 1, upgrades={0: _unversioned_end_usage_job_to_1})


def end_usage_to_json(end: EndUsage) -> dict[str, Any]:
    """An end of usage as its job's data."""
    return END_USAGE_JOB.dump({"account_id": end.account_id, "instance_ids": list(end.instance_ids),
                               "end_time": _time_json(end.end_time)})


def end_usage_from_json(data: dict[str, Any]) -> EndUsage:
    """The one decoder of an end-usage job's data, of any version."""
    stored = END_USAGE_JOB.load(data)
    return EndUsage(str(stored["account_id"]), [str(i) for i in stored["instance_ids"]],
                    _utc(datetime.fromisoformat(stored["end_time"])))
