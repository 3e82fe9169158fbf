"""The region image store: content addressing, crash safety, verified copies, throttling, bounded memory, GC."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from catalog_service.adapters.image_store import (
    BlobMissing,
    ChecksumMismatch,
    ImageStore,
    StoredBlob,
    TooLarge,
)

MiB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def temps_under(root: Path) -> list[Path]:
    return [p for p in files_under(root) if p.name.startswith(".tmp-")]


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def test_write_then_read_has_and_size(store: ImageStore) -> None:
    data = b"disk bytes " * 100_000

    blob = store.write("ap-guangzhou", [data[:400_000], data[400_000:]])

    assert blob == StoredBlob(sha256(data), len(data))
    assert store.has("ap-guangzhou", blob.checksum)
    assert not store.has("ap-beijing", blob.checksum)
    assert store.size("ap-guangzhou", blob.checksum) == len(data)
    assert b"".join(store.read("ap-guangzhou", blob.checksum)) == data
    assert store.path("ap-guangzhou", blob.checksum) == (
        store.root / "ap-guangzhou" / "sha256" / blob.checksum[:2] / blob.checksum)
    assert temps_under(store.root) == []


def test_read_chunks_are_bounded_by_the_chunk_size(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, chunk_size=1000)
    blob = store.put_bytes("ap-guangzhou", bytes(range(256)) * 10)

    assert [len(c) for c in store.read("ap-guangzhou", blob.checksum)] == [1000, 1000, 560]


def test_the_same_bytes_are_stored_once(store: ImageStore) -> None:
    first = store.put_bytes("ap-guangzhou", b"same image")
    inode = store.path("ap-guangzhou", first.checksum).stat().st_ino

    second = store.write("ap-guangzhou", [b"same ", b"image"])

    assert second == first
    assert store.path("ap-guangzhou", first.checksum).stat().st_ino == inode  # not rewritten
    assert files_under(store.root) == [store.path("ap-guangzhou", first.checksum)]


def test_missing_blob(store: ImageStore) -> None:
    absent = sha256(b"nothing")
    with pytest.raises(BlobMissing):
        store.read("ap-guangzhou", absent)
    with pytest.raises(BlobMissing):
        store.size("ap-guangzhou", absent)
    with pytest.raises(BlobMissing):
        store.verify("ap-guangzhou", absent)
    with pytest.raises(BlobMissing):
        store.copy("ap-guangzhou", absent, "ap-beijing")


@pytest.mark.parametrize("region", ["../etc", "AP", "a/b", ""])
def test_region_names_cannot_leave_the_root(store: ImageStore, region: str) -> None:
    with pytest.raises(ValueError, match="not a region name"):
        store.put_bytes(region, b"x")


def test_not_a_checksum_is_refused(store: ImageStore) -> None:
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        store.path("ap-guangzhou", "../../../etc/passwd")


def test_progress_that_raises_aborts_the_write_and_leaves_nothing(store: ImageStore) -> None:
    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        if done >= 2 * MiB:
            raise InterruptedError("job lease lost")

    with pytest.raises(InterruptedError):
        store.write("ap-guangzhou", (b"x" * MiB for _ in range(5)), progress=progress)

    assert seen == [MiB, 2 * MiB]
    assert files_under(store.root) == []


def test_a_failing_source_leaves_nothing(store: ImageStore) -> None:
    def source() -> Iterator[bytes]:
        yield b"a" * 1000
        raise ConnectionResetError("source went away")

    with pytest.raises(ConnectionResetError):
        store.write("ap-guangzhou", source())

    assert files_under(store.root) == []


def test_over_max_bytes_raises_as_soon_as_exceeded(store: ImageStore) -> None:
    pulled = []

    def source() -> Iterator[bytes]:
        for i in range(100):
            pulled.append(i)
            yield b"z" * 1000

    with pytest.raises(TooLarge):
        store.write("ap-guangzhou", source(), max_bytes=2500)

    assert len(pulled) == 3
    assert files_under(store.root) == []
    assert store.write("ap-guangzhou", [b"z" * 2500], max_bytes=2500).size == 2500


def test_progress_is_reported_per_mebibyte_and_at_the_end(tmp_path: Path) -> None:
    fake = FakeTime()
    store = ImageStore(tmp_path, clock=fake.clock, sleep=fake.sleep)
    seen: list[int] = []

    store.write("ap-guangzhou", (b"p" * (64 << 10) for _ in range(50)), progress=seen.append)

    assert seen == [MiB, 2 * MiB, 3 * MiB, 50 * (64 << 10)]


def test_copy_to_another_region_verifies_the_bytes(store: ImageStore) -> None:
    blob = store.put_bytes("ap-guangzhou", b"image to sync" * 1000)
    seen: list[int] = []

    copied = store.copy("ap-guangzhou", blob.checksum, "ap-beijing", progress=seen.append)

    assert copied == blob
    assert b"".join(store.read("ap-beijing", blob.checksum)) == b"image to sync" * 1000
    assert seen[-1] == blob.size


def test_copy_of_a_corrupted_blob_raises_and_stores_nothing(store: ImageStore) -> None:
    blob = store.put_bytes("ap-guangzhou", b"image to sync" * 1000)
    source = store.path("ap-guangzhou", blob.checksum)
    data = bytearray(source.read_bytes())
    data[5000] ^= 0x01
    source.write_bytes(bytes(data))

    with pytest.raises(ChecksumMismatch) as caught:
        store.copy("ap-guangzhou", blob.checksum, "ap-beijing")

    assert caught.value.expected == blob.checksum
    assert caught.value.region == "ap-guangzhou"
    assert not store.has("ap-beijing", blob.checksum)
    assert not store.has("ap-beijing", sha256(bytes(data)))
    assert temps_under(store.root) == []


def test_verify(store: ImageStore) -> None:
    blob = store.put_bytes("ap-guangzhou", b"verify me" * 500)
    assert store.verify("ap-guangzhou", blob.checksum) == blob

    path = store.path("ap-guangzhou", blob.checksum)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ChecksumMismatch):
        store.verify("ap-guangzhou", blob.checksum)


def test_throttle_sleeps_to_hold_the_byte_rate(tmp_path: Path) -> None:
    fake = FakeTime()
    store = ImageStore(tmp_path, bytes_per_second=2048, clock=fake.clock, sleep=fake.sleep)

    blob = store.write("ap-guangzhou", (b"t" * 1024 for _ in range(10)))
    assert fake.slept == pytest.approx(5.0)

    store.verify("ap-guangzhou", blob.checksum)
    assert fake.slept == pytest.approx(10.0)


def test_throttle_slows_a_real_write(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, bytes_per_second=400 * 1024, chunk_size=16 * 1024)
    started = time.monotonic()
    store.write("ap-guangzhou", (b"r" * (16 * 1024) for _ in range(8)))
    assert time.monotonic() - started >= 0.5 * (128 / 400)


def test_unthrottled_store_never_sleeps(tmp_path: Path) -> None:
    fake = FakeTime()
    store = ImageStore(tmp_path, clock=fake.clock, sleep=fake.sleep)
    store.write("ap-guangzhou", (b"u" * 1024 for _ in range(100)))
    assert fake.slept == 0


def test_memory_stays_bounded_on_a_big_lazy_stream(store: ImageStore) -> None:
    size = 200 * MiB
    tracemalloc.start()
    try:
        blob = store.write("ap-guangzhou", (bytes(MiB) for _ in range(size // MiB)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert blob.size == size
    assert peak < 8 * MiB, f"peak traced memory {peak} bytes"
    stored = store.path("ap-guangzhou", blob.checksum).stat()
    assert stored.st_size == size
    assert stored.st_blocks * 512 < MiB  # zero runs are stored as holes


def test_a_sparse_source_file_streams_in_bounded_memory(store: ImageStore, tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.raw"
    with sparse.open("wb") as f:
        f.truncate(200 * MiB)
        f.seek(100 * MiB)
        f.write(b"one island of data in the middle")

    def chunks() -> Iterator[bytes]:
        with sparse.open("rb") as f:
            while chunk := f.read(MiB):
                yield chunk

    tracemalloc.start()
    try:
        blob = store.write("ap-guangzhou", chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 * MiB, f"peak traced memory {peak} bytes"
    expected = hashlib.sha256()
    for chunk in chunks():
        expected.update(chunk)
    assert blob == StoredBlob(expected.hexdigest(), 200 * MiB)
    assert store.verify("ap-guangzhou", blob.checksum) == blob


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_garbage_collection_removes_only_old_unreferenced_blobs_and_old_temps(store: ImageStore) -> None:
    kept_old = store.put_bytes("ap-guangzhou", b"referenced, old")
    same_bytes_elsewhere = store.put_bytes("ap-beijing", b"referenced, old")
    dropped = store.put_bytes("ap-guangzhou", b"unreferenced, old")
    young = store.put_bytes("ap-guangzhou", b"unreferenced, just written")
    for region, blob in [("ap-guangzhou", kept_old), ("ap-beijing", same_bytes_elsewhere),
                         ("ap-guangzhou", dropped)]:
        age(store.path(region, blob.checksum), 7200)
    old_temp = store.root / "ap-guangzhou" / ".tmp-crashed"
    old_temp.write_bytes(b"half an image")
    age(old_temp, 7200)
    young_temp = store.root / "ap-guangzhou" / ".tmp-in-flight"
    young_temp.write_bytes(b"a write in progress")

    removed = store.collect_garbage({("ap-guangzhou", kept_old.checksum)}, min_age=timedelta(hours=1))

    assert sorted(removed) == sorted([("ap-guangzhou", dropped.checksum),
                                      ("ap-beijing", same_bytes_elsewhere.checksum)])
    assert store.has("ap-guangzhou", kept_old.checksum)
    assert store.has("ap-guangzhou", young.checksum)
    assert not store.has("ap-guangzhou", dropped.checksum)
    assert not store.has("ap-beijing", same_bytes_elsewhere.checksum)
    assert not old_temp.exists()
    assert young_temp.exists()


def test_garbage_collection_uses_the_given_time(store: ImageStore) -> None:
    blob = store.put_bytes("ap-guangzhou", b"unreferenced")
    assert store.collect_garbage([], min_age=timedelta(hours=1)) == []

    later = datetime.now(UTC) + timedelta(hours=2)
    assert store.collect_garbage([], min_age=timedelta(hours=1), now=later) == [("ap-guangzhou", blob.checksum)]


def test_writing_bytes_already_stored_makes_the_blob_young_again(store: ImageStore) -> None:
    blob = store.put_bytes("ap-guangzhou", b"deleted image, blob not yet collected")
    age(store.path("ap-guangzhou", blob.checksum), 7200)

    store.put_bytes("ap-guangzhou", b"deleted image, blob not yet collected")  # a new import of the same bytes

    assert store.collect_garbage([], min_age=timedelta(hours=1)) == []
    assert store.has("ap-guangzhou", blob.checksum)


def test_regions_usage(store: ImageStore) -> None:
    store.put_bytes("ap-guangzhou", b"a" * 100)
    store.put_bytes("ap-guangzhou", b"b" * 50)
    store.put_bytes("ap-beijing", b"a" * 100)

    assert store.regions_usage() == {"ap-beijing": 100, "ap-guangzhou": 150}
    assert ImageStore(store.root / "nowhere").regions_usage() == {}
