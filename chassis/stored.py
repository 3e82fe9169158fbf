"""Stored JSON documents: each kind carries a schema version and is read through one decoder.

A JSON document kept in a database column (a launch's request, a quote, a job's payload, an answer kept
by request_id) outlives the code that wrote it: a row written before a deploy is read after it, and, in
a rolling deploy, a row written by a newer replica is read by an older one. So each kind of document is
declared once, as a ``Document``: its kind, its current version, and one upgrade function per older
version, each turning the body of version ``n`` into the body of version ``n + 1``:

    LAUNCH_REQUEST = Document("launch request", 1, upgrades={0: _unversioned_to_1})
    row["request"] = LAUNCH_REQUEST.dumps(body)       # {"v": 1, ...body}
    body = LAUNCH_REQUEST.loads(row["request"])       # any known version, upgraded to 1

Writers always write the current version; readers upgrade step by step, so each upgrade is written
once, against the shape it knows, and never has to change. Version 0 is the unversioned shape of the
release before the kind was versioned: a JSON object without ``"v"``, or a value that is not an object at
all (a bare list). A version newer than the current one (written by a newer release) or older than the
oldest upgrade is refused with ``UnknownVersion``, which names the kind and both versions: never a
``KeyError`` on a field that moved.

Change a kind by bumping ``version`` and adding the upgrade from the version before; never edit an upgrade
that shipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The key of the version in a document that is a JSON object.
VERSION_KEY = "v"
# The version of a document that carries none: the shape of the release before its kind was versioned.
UNVERSIONED = 0

Upgrade = Callable[[Any], Any]


class UnknownVersion(ValueError):
    """A stored document of a version this release cannot read: written by a newer release (a rolling
    deploy, or a rollback), or older than any upgrade it knows."""

    def __init__(self, kind: str, version: object, current: int, oldest: int):
        self.kind = kind
        self.version = version
        self.current = current
        super().__init__(f"stored {kind} of version {version!r}: this release reads versions {oldest} to {current}"
                         + (" (written by a newer release?)" if isinstance(version, int) and version > current
                            else ""))


@dataclass(frozen=True)
class Document:
    """One kind of stored JSON document: its ``version`` (what is written now) and ``upgrades``, from each
    older version still readable to the next. Upgrades must run without gaps up to ``version``."""

    kind: str
    version: int
    upgrades: Mapping[int, Upgrade] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version < UNVERSIONED:
            raise ValueError(f"{self.kind}: a version is 0 or more")
        expected = set(range(self.oldest, self.version))
        if set(self.upgrades) != expected:
            raise ValueError(f"{self.kind}: upgrades must run from each version {self.oldest}..{self.version - 1} "
                             f"to the next, got {sorted(self.upgrades)}")

    @property
    def oldest(self) -> int:
        """The oldest version this release reads."""
        return min(self.upgrades, default=self.version)

    def upgrade(self, version: object, body: Any) -> Any:
        """The body of a document stored with ``version``, upgraded step by step to the current version.
        For formats that keep the version beside the body (a stored response's envelope)."""
        if isinstance(version, bool) or not isinstance(version, int) \
                or not self.oldest <= version <= self.version:
            raise UnknownVersion(self.kind, version, self.version, self.oldest)
        for step in range(version, self.version):
            body = self.upgrades[step](body)
        return body

    def dump(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The body (a JSON object of the current version) with its version, ready to be stored."""
        if VERSION_KEY in body:
            raise ValueError(f"a {self.kind} body must not have a {VERSION_KEY!r} field of its own")
        return {VERSION_KEY: self.version, **body}

    def dumps(self, body: Mapping[str, Any]) -> str:
        return json.dumps(self.dump(body), separators=(",", ":"), sort_keys=True)

    def load(self, stored: Any) -> Any:
        """The body of a stored document (already parsed from JSON), of any version this release reads,
        upgraded to the current one, without its version. No ``"v"``, or not an object: version 0."""
        if isinstance(stored, dict) and VERSION_KEY in stored:
            body = {k: v for k, v in stored.items() if k != VERSION_KEY}
            return self.upgrade(stored[VERSION_KEY], body)
        return self.upgrade(UNVERSIONED, stored)

    def loads(self, text: str) -> Any:
        return self.load(json.loads(text))
