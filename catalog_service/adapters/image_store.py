"""The image store: each region's disk images, content-addressed by SHA-256, on a local filesystem.

A blob lives at ``<root>/<region>/sha256/<2 hex>/<64 hex>``. Writes stream into a temporary file in
the region's folder (``.tmp-*``, same filesystem) and are renamed to their address only once the
bytes are on disk, so a reader never sees a partial blob under a real name, even after a crash.

Everything here is synchronous and streams with memory bounded by the chunk size: the catalog's
job handlers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
"""Called with the bytes done so far, about every MiB or quarter second and once at the end; may raise to abort."""

TEMP_PREFIX = ".tmp-"
_PROGRESS_BYTES = 1 << 20
_PROGRESS_SECONDS = 0.25
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CHECKSUM = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredBlob:
    checksum: str  # sha256, lowercase hex
    size: int


class ChecksumMismatch(Exception):
    def __init__(self, region: str, expected: str, actual: str):
        super().__init__(f"blob in {region} hashes to {actual}, not {expected}")
        self.region, self.expected, self.actual = region, expected, actual


class BlobMissing(Exception):
    def __init__(self, region: str, checksum: str):
        super().__init__(f"no blob {checksum} in {region}")
        self.region, self.checksum = region, checksum


class TooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class _Pacer:
    """Throttles a stream to a byte rate and reports progress at a bounded frequency."""

    def __init__(self, bytes_per_second: int | None, progress: Progress | None,
                 clock: Callable[[], float], sleep: Callable[[float], None]):
        self._rate = bytes_per_second
        self._progress = progress
        self._clock, self._sleep = clock, sleep
        self._start = self._last_report_time = clock()
        self.done = self._last_report_bytes = 0

    def advance(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if self._rate:
            ahead = self.done / self._rate - (now - self._start)
            if ahead > 0:
                self._sleep(ahead)
                now = self._clock()
        if self._progress is not None and (self.done - self._last_report_bytes >= _PROGRESS_BYTES
                                           or now - self._last_report_time >= _PROGRESS_SECONDS):
            self._last_report_bytes, self._last_report_time = self.done, now
            self._progress(self.done)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress(self.done)


class ImageStore:
    def __init__(self, root: Path, bytes_per_second: int | None = None, chunk_size: int = 1 << 20, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive (or None for no limit)")
        self.root = Path(root)
        self.bytes_per_second = bytes_per_second
        self.chunk_size = chunk_size
        self._clock, self._sleep = clock, sleep

    # -- addressing -------------------------------------------------------------------------------

    def path(self, region: str, checksum: str) -> Path:
        _check_region(region)
        if not _CHECKSUM.match(checksum):
            raise ValueError(f"not a sha256 hex digest: {checksum!r}")
        return self.root / region / "sha256" / checksum[:2] / checksum

    def has(self, region: str, checksum: str) -> bool:
        return self.path(region, checksum).is_file()

    def size(self, region: str, checksum: str) -> int:
        try:
            return self.path(region, checksum).stat().st_size
        except FileNotFoundError:
            raise BlobMissing(region, checksum) from None

    # -- reading ----------------------------------------------------------------------------------

    def read(self, region: str, checksum: str) -> Iterator[bytes]:
        """The blob's bytes in chunks; BlobMissing at once if it is absent."""
        return _chunks_of(self._open(region, checksum), self.chunk_size)

    def verify(self, region: str, checksum: str, *, progress: Progress | None = None) -> StoredBlob:
        """Re-reads and re-hashes a blob (throttled)."""
        digest = hashlib.sha256()
        pacer = self._pacer(progress)
        for chunk in self.read(region, checksum):
            digest.update(chunk)
            pacer.advance(len(chunk))
        pacer.finish()
        if digest.hexdigest() != checksum:
            raise ChecksumMismatch(region, checksum, digest.hexdigest())
        return StoredBlob(checksum, pacer.done)

    # -- writing ----------------------------------------------------------------------------------

    def write(self, region: str, chunks: Iterable[bytes], *, progress: Progress | None = None,
              max_bytes: int | None = None, expected_checksum: str | None = None) -> StoredBlob:
        """Streams chunks into the region's store and returns their address.

        Nothing appears under a real name unless every byte was written and synced (and, with
        ``expected_checksum``, hashes to it: ChecksumMismatch otherwise). Any exception, including one
        from ``progress`` or from the chunks' source, removes the temporary file and propagates.
        Runs of zero bytes become holes, so raw disk images stay sparse.
        """
        _check_region(region)
        region_dir = self.root / region
        new_dirs = _make_dirs(region_dir)
        fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=region_dir)
        temp = Path(temp_name)
        try:
            digest = hashlib.sha256()
            pacer = self._pacer(progress)
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    if not chunk:
                        continue
                    if max_bytes is not None and pacer.done + len(chunk) > max_bytes:
                        raise TooLarge(max_bytes)
                    digest.update(chunk)
                    if chunk.count(0) == len(chunk):
                        out.seek(len(chunk), os.SEEK_CUR)
                    else:
                        out.write(chunk)
                    pacer.advance(len(chunk))
                out.truncate(pacer.done)  # materialises a trailing hole
                out.flush()
                os.fsync(out.fileno())
            checksum = digest.hexdigest()
            if expected_checksum is not None and checksum != expected_checksum:
                raise ChecksumMismatch(region, expected_checksum, checksum)
            pacer.finish()
            self._settle(temp, region, checksum, new_dirs)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        return StoredBlob(checksum, pacer.done)

    def put_bytes(self, region: str, data: bytes) -> StoredBlob:
        return self.write(region, [data])

    def copy(self, src_region: str, checksum: str, dst_region: str, *,
             progress: Progress | None = None) -> StoredBlob:
        """Copies a blob to another region, verifying its bytes on the way (throttled once, by the write)."""
        try:
            return self.write(dst_region, self.read(src_region, checksum), progress=progress,
                              expected_checksum=checksum)
        except ChecksumMismatch as mismatch:
            raise ChecksumMismatch(src_region, checksum, mismatch.actual) from None

    def _settle(self, temp: Path, region: str, checksum: str, changed_dirs: list[Path]) -> None:
        dest = self.path(region, checksum)
        changed_dirs = [*changed_dirs, *_make_dirs(dest.parent)]
        if dest.exists():
            # Same bytes already stored: keep that copy, and make it young again so that the garbage
            # collector leaves it alone until the caller has recorded its reference.
            temp.unlink()
            os.utime(dest)
        else:
            os.replace(temp, dest)
        for directory in dict.fromkeys([dest.parent, *changed_dirs]):
            _fsync_dir(directory)

    # -- housekeeping -----------------------------------------------------------------------------

    def collect_garbage(self, referenced: Collection[tuple[str, str]], *, min_age: timedelta,
                        now: datetime | None = None) -> list[tuple[str, str]]:
        """Removes unreferenced blobs and abandoned temporary files older than ``min_age``.

        Returns the (region, checksum) of the blobs removed. Anything younger than ``min_age`` stays:
        a job may have just written it and not yet recorded its reference.
        """
        keep = set(referenced)
        cutoff = (now or datetime.now(UTC)).timestamp() - min_age.total_seconds()
        removed: list[tuple[str, str]] = []
        for region_dir in self._region_dirs():
            region = region_dir.name
            for temp in region_dir.glob(TEMP_PREFIX + "*"):
                if _unlink_if_older(temp, cutoff):
                    log.info("removed abandoned temporary file %s", temp)
            for blob in self._blobs(region_dir):
                if (region, blob.name) not in keep and _unlink_if_older(blob, cutoff):
                    removed.append((region, blob.name))
        if removed:
            log.info("removed %d unreferenced blobs", len(removed))
        return removed

    def regions_usage(self) -> dict[str, int]:
        """Bytes stored per region (the blobs' logical sizes)."""
        usage: dict[str, int] = {}
        for region_dir in self._region_dirs():
            total = 0
            for blob in self._blobs(region_dir):
                with contextlib.suppress(FileNotFoundError):
                    total += blob.stat().st_size
            usage[region_dir.name] = total
        return usage

    # -- helpers ----------------------------------------------------------------------------------

    def _open(self, region: str, checksum: str) -> BinaryIO:
        try:
            return self.path(region, checksum).open("rb")
        except FileNotFoundError:
            raise BlobMissing(region, checksum) from None

    def _pacer(self, progress: Progress | None) -> _Pacer:
        return _Pacer(self.bytes_per_second, progress, self._clock, self._sleep)

    def _region_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _REGION.match(p.name))

    @staticmethod
    def _blobs(region_dir: Path) -> Iterator[Path]:
        for blob in (region_dir / "sha256").glob("??/*"):
            if _CHECKSUM.match(blob.name) and blob.parent.name == blob.name[:2]:
                yield blob


def _chunks_of(stream: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(chunk_size):
            yield chunk


def _check_region(region: str) -> None:
    if not _REGION.match(region):
        raise ValueError(f"not a region name: {region!r}")


def _make_dirs(directory: Path) -> list[Path]:
    """Creates a directory and its missing parents; returns the parents whose entries changed."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    directory.mkdir(parents=True, exist_ok=True)
    return [p.parent for p in missing]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _unlink_if_older(path: Path, cutoff: float) -> bool:
    # Look again right before removing: a write may have just refreshed a blob it deduplicated onto.
    if not _older_than(path, cutoff):
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return False
