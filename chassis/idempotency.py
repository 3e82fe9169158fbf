"""Idempotent mutations (AIP-155 ``request_id``): each context's ledger of the requests it has answered.

A context declares its table once (``REQUESTS = request_table("catalog")``, created with its other
tables) and, inside the unit of work of a mutation, claims the request id before it changes anything:

    claim = uow.image_requests.claim(caller, request_id, "DeleteImage", image_id=image_id)
    if claim.repeated:
        return claim.response
    ...                              # the mutation
    claim.answer(result)
    uow.commit()

The claim is a row inserted in the mutation's own transaction, so both commit or neither does: a call
that failed leaves no trace and its retry runs again. On PostgreSQL a concurrent call with the same id
(on any replica) blocks on the row's primary key until the first transaction ends, then reads its
answer; on SQLite, BEGIN IMMEDIATE already runs writers one at a time. The same id with other
parameters, or on another RPC, is FAILED_PRECONDITION ``IDEMPOTENCY_PARAMETER_MISMATCH``. An empty
request_id asks for no idempotency.

Records are kept ``KEEP_FOR`` (7 days; the promise is at least 24 hours): each new request removes its
account's records older than that, so no background job is needed to bound the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Column, Connection, DateTime, Index, MetaData, String, Table, Text, delete, select, update
from sqlmodel import SQLModel

from chassis.db import insert_ignoring_duplicates
from chassis.errors import FailedPrecondition
from chassis.fingerprints import fingerprint
from chassis.ids import MAX_REQUEST_ID_LENGTH, check_request_id
from chassis.stored import Document, UnknownVersion

T = TypeVar("T")

KEEP_FOR = timedelta(days=7)


def request_table(context: str, metadata: MetaData | None = None) -> Table:
    """The table ``<context>_request`` of the requests one context has answered, per account."""
    name = f"{context}_request"
    return Table(
        name, SQLModel.metadata if metadata is None else metadata,
        Column("account_id", String(32), primary_key=True),
        Column("request_id", String(MAX_REQUEST_ID_LENGTH), primary_key=True),
        Column("method", String(64), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        # {"v": the response format's version, "response": its JSON}; NULL only inside the claiming transaction
        Column("response", Text, nullable=True),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Index(f"ix_{name}_age", "account_id", "create_time"),
    )


@dataclass(frozen=True)
class ResponseFormat(Generic[T]):
    """How one kind of response is kept as JSON. ``decode`` gets the version a response was stored with,
    so a context that changes ``encode`` (and bumps ``version``) still reads what it wrote before. A stored
    version newer than ``version`` (a newer replica's) is refused before ``decode`` sees it. Prefer ``of``,
    which keeps the versions and their upgrades in a chassis.stored.Document."""

    version: int
    encode: Callable[[T], Any]
    decode: Callable[[int, Any], T]

    @classmethod
    def of(cls, document: Document, encode: Callable[[T], Any], decode: Callable[[Any], T]) -> ResponseFormat[T]:
        """The format of ``document``: ``decode`` reads its current version only, older ones are upgraded first."""
        return cls(document.version, encode, lambda version, body: decode(document.upgrade(version, body)))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Claim(Generic[T]):
    """A mutation's hold on its request id: ``repeated`` (then ``response`` is the first call's answer)
    or new (then perform the mutation and ``answer`` with its result before committing)."""

    def __init__(self, ledger: RequestLedger[T], account_id: str, request_id: str,
                 earlier: tuple[T] | None = None):
        self._ledger = ledger
        self._account_id = account_id
        self._request_id = request_id
        self._earlier = earlier

    @property
    def repeated(self) -> bool:
        return self._earlier is not None

    @property
    def response(self) -> T:
        if self._earlier is None:
            raise LookupError("a new request has no earlier response")
        return self._earlier[0]

    def answer(self, response: T) -> None:
        """Records what the call returned, in its transaction (nothing to record without a request_id).
        Call it last, just before the commit: it also drops the account's expired records, whose row locks
        are best held briefly."""
        if self._request_id and self._earlier is None:
            self._ledger.record(self._account_id, self._request_id, response)


class RequestLedger(Generic[T]):
    """A context's request table seen from one unit of work, for the responses of one format."""

    def __init__(self, connection: Connection, table: Table, response_format: ResponseFormat[T],
                 clock: Callable[[], datetime] = _utc_now):
        self._connection = connection
        self._table = table
        self._format = response_format
        self._clock = clock

    def claim(self, account_id: str, request_id: str, method: str, **fields: Any) -> Claim[T]:
        """Claims ``request_id`` for a call of ``method`` whose parameters are ``fields`` (plain values,
        see chassis.fingerprints): new, or answered before with the same method and fields."""
        if not request_id:
            return Claim(self, account_id, request_id)
        check_request_id(request_id)
        print_ = fingerprint(method, **fields)
        t = self._table
        claimed = self._connection.execute(
            insert_ignoring_duplicates(self._connection, t)
            .values(account_id=account_id, request_id=request_id, method=method, fingerprint=print_,
                    response=None, create_time=self._clock())
            .returning(t.c.request_id)
        ).first()
        if claimed is not None:
            return Claim(self, account_id, request_id)
        row = self._connection.execute(select(t.c.account_id, t.c.method, t.c.fingerprint, t.c.response).where(
            t.c.account_id == account_id, t.c.request_id == request_id)).one()
        return self._earlier(row, request_id, method, print_)

    def answered(self, account_id: str, request_id: str, method: str, **fields: Any) -> Claim[T] | None:
        """Reads, without claiming anything, whether ``request_id`` was answered before for this call (then
        the claim is ``repeated``; other parameters are IDEMPOTENCY_PARAMETER_MISMATCH): for a mutation whose
        checks must not run again on a repeat. None when it was not (or no request_id is given)."""
        if not request_id:
            return None
        check_request_id(request_id)
        t = self._table
        row = self._connection.execute(select(t.c.account_id, t.c.method, t.c.fingerprint, t.c.response).where(
            t.c.account_id == account_id, t.c.request_id == request_id)).first()
        if row is None or row.response is None:
            return None
        return self._earlier(row, request_id, method, fingerprint(method, **fields))

    def _earlier(self, row: Any, request_id: str, method: str, print_: str) -> Claim[T]:
        if (row.method, row.fingerprint) != (method, print_):
            raise FailedPrecondition("IDEMPOTENCY_PARAMETER_MISMATCH",
                                     "request_id was used before with other parameters"
                                     + ("" if row.method == method else f" (for {row.method})"),
                                     subject=f"request_id:{request_id}")
        if row.response is None:  # claimed and committed without an answer: a bug in the calling handler
            raise RuntimeError(f"{method} claimed a request_id and never answered it")
        return Claim(self, row.account_id, request_id, (self._decoded(method, row.response),))

    def _decoded(self, method: str, raw: str) -> T:
        """The one decoder of stored responses: ``{"v": the format's version, "response": its JSON}`` (the
        only shape the ledger ever wrote), read by the format, which upgrades older versions."""
        stored = json.loads(raw)
        version = stored.get("v") if isinstance(stored, dict) else None
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= self._format.version \
                or "response" not in stored:
            raise UnknownVersion(f"{method} response", version, self._format.version, 1)
        return self._format.decode(version, stored["response"])

    def record(self, account_id: str, request_id: str, response: T) -> None:
        t = self._table
        stored = json.dumps({"v": self._format.version, "response": self._format.encode(response)},
                            separators=(",", ":"), sort_keys=True)
        self._connection.execute(update(t).where(t.c.account_id == account_id, t.c.request_id == request_id)
                                 .values(response=stored))
        self._connection.execute(delete(t).where(t.c.account_id == account_id,
                                                 t.c.create_time < self._clock() - KEEP_FOR))
