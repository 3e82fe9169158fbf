"""Reads and writes shares with SQLAlchemy Core and hands back domain objects."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from chassis.db import insert_ignoring_duplicates
from chassis.idempotency import ResponseFormat
from chassis.stored import Document
from sharing_service.adapters.tables import IMAGE_LOCKS, SHARES
from sharing_service.domain.model import Share, ShareState


def _to_share(row: object) -> Share:
    m = row._mapping  # type: ignore[attr-defined]
    return Share(m["image_id"], m["region"], m["owner_account_id"], m["recipient_account_id"],
                 ShareState(m["state"]), m["create_time"])


class ShareRepository:
    def __init__(self, connection: Connection):
        self._connection = connection

    def lock_image(self, image_id: str) -> datetime | None:
        """Serializes share changes of one image (a row lock on PostgreSQL; SQLite's BEGIN IMMEDIATE
        already serializes every writer). Returns the image's delete hold: no share before that time."""
        self._connection.execute(insert_ignoring_duplicates(self._connection, IMAGE_LOCKS), [{"image_id": image_id}])
        c = IMAGE_LOCKS.c
        until = self._connection.execute(
            select(c.retired_until).where(c.image_id == image_id).with_for_update()).scalar_one()
        # SQLite hands back the naive UTC time that it stored.
        return None if until is None else until.replace(tzinfo=until.tzinfo or UTC)

    def hold_for_deletion(self, image_id: str, until: datetime | None) -> None:
        """Sets (or with None ends) the delete hold of an image locked by ``lock_image``."""
        self._connection.execute(update(IMAGE_LOCKS).where(IMAGE_LOCKS.c.image_id == image_id)
                                 .values(retired_until=until))

    def recipients_of(self, image_id: str) -> set[str]:
        rows = self._connection.execute(select(SHARES.c.recipient_account_id).where(SHARES.c.image_id == image_id))
        return {r[0] for r in rows}

    def add(self, shares: Iterable[Share]) -> None:
        values = [
            {"image_id": s.image_id, "recipient_account_id": s.recipient_account_id,
             "owner_account_id": s.owner_account_id, "region": s.region, "state": s.state.value,
             "create_time": s.create_time}
            for s in shares
        ]
        if values:
            self._connection.execute(SHARES.insert(), values)

    def remove(self, image_id: str, recipient_account_ids: list[str]) -> None:
        self._connection.execute(delete(SHARES).where(
            SHARES.c.image_id == image_id, SHARES.c.recipient_account_id.in_(recipient_account_ids)))

    def count(self, image_id: str) -> int:
        return self._connection.execute(
            select(func.count()).select_from(SHARES).where(SHARES.c.image_id == image_id)).scalar_one()

    def of_image(self, image_id: str, after: str | None = None, limit: int | None = None) -> list[Share]:
        statement = select(SHARES).where(SHARES.c.image_id == image_id)
        if after is not None:
            statement = statement.where(SHARES.c.recipient_account_id > after)
        statement = statement.order_by(SHARES.c.recipient_account_id).limit(limit)
        return [_to_share(r) for r in self._connection.execute(statement)]

    def lock_shared_image(self, image_id: str) -> None:
        """Serializes a recipient's decision with the share changes of the image (``lock_image``) without
        making a lock row: an image with a share has one, and strangers' calls leave nothing behind."""
        c = IMAGE_LOCKS.c
        self._connection.execute(select(c.image_id).where(c.image_id == image_id).with_for_update()).first()

    def set_state(self, image_id: str, recipient_account_id: str, state: ShareState) -> None:
        self._connection.execute(update(SHARES).where(
            SHARES.c.image_id == image_id, SHARES.c.recipient_account_id == recipient_account_id,
        ).values(state=state.value))

    def received(self, recipient_account_id: str, region: str, states: Iterable[ShareState], after: str | None,
                 limit: int) -> list[Share]:
        c = SHARES.c
        statement = select(SHARES).where(c.recipient_account_id == recipient_account_id, c.region == region,
                                         c.state.in_(sorted(s.value for s in states)))
        if after is not None:
            statement = statement.where(c.image_id > after)
        return [_to_share(r) for r in self._connection.execute(statement.order_by(c.image_id).limit(limit))]

    def get(self, image_id: str, recipient_account_id: str) -> Share | None:
        row = self._connection.execute(select(SHARES).where(
            SHARES.c.image_id == image_id, SHARES.c.recipient_account_id == recipient_account_id)).first()
        return None if row is None else _to_share(row)

    def received_of(self, recipient_account_id: str, image_ids: Iterable[str]) -> dict[str, Share]:
        """The recipient's shares of any of these images (in one query, whatever their number), by image."""
        c = SHARES.c
        rows = self._connection.execute(select(SHARES).where(c.recipient_account_id == recipient_account_id,
                                                             c.image_id.in_(sorted(set(image_ids)))))
        return {share.image_id: share for share in map(_to_share, rows)}


def _shares_to_json(shares: list[Share]) -> list[dict[str, str]]:
    return [{"image_id": s.image_id, "region": s.region, "owner_account_id": s.owner_account_id,
             "recipient_account_id": s.recipient_account_id, "state": s.state.value,
             "create_time": s.create_time.isoformat()} for s in shares]


def _shares_from_json(shares: Any) -> list[Share]:
    return [Share(s["image_id"], s["region"], s["owner_account_id"], s["recipient_account_id"],
                  ShareState(s["state"]), datetime.fromisoformat(s["create_time"])) for s in shares]


# What ShareImage and UnshareImage answered: the image's shares after the call. Version 1 (the first): a list of
# shares, image_id, region, owner_account_id, recipient_account_id, state and create_time (ISO 8601).
SHARES_ANSWER = ResponseFormat.of(Document("ShareImage answer", 1), encode=_shares_to_json,
                                  decode=_shares_from_json)
# What AcceptImageShare and RejectImageShare answered: the share after the call (kept as a list of one, in the
# shape of SHARES_ANSWER). Version 1 (the first).
SHARE_ANSWER = ResponseFormat.of(Document("AcceptImageShare answer", 1), encode=lambda share: _shares_to_json([share]),
                                 decode=lambda stored: _shares_from_json(stored)[0])
