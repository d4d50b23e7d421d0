"""The registry of system shared-memory regions, over files in a temporary directory standing in
for /dev/shm (the registry opens them as it opens POSIX shared-memory objects)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tesserad.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tesserad.serving.shared_memory import RegionStatus, SharedMemory, TensorPlace, shm_path


@pytest.fixture
def memory(tmp_path: Path) -> SharedMemory:
    (tmp_path / "obj").write_bytes(bytes(range(64)))
    return SharedMemory(256, tmp_path)


def test_a_region_is_registered_reported_and_unregistered(memory: SharedMemory, tmp_path: Path) -> None:
    memory.register("in", "/obj", 8, 16)
    memory.register("out", "obj", 32, 32)
    assert memory.status() == [RegionStatus("in", "/obj", 8, 16), RegionStatus("out", "obj", 32, 32)]
    assert memory.status("out") == [RegionStatus("out", "obj", 32, 32)]
    memory.unregister("in")
    assert [r.name for r in memory.status()] == ["out"]
    with pytest.raises(NotFound, match="no system shared-memory region 'in' is registered"):
        memory.status("in")
    # As Triton: unregistering a name that is not registered succeeds.
    memory.unregister("in")
    memory.unregister()
    assert memory.status() == []
    # The object is the client's: never unlinked.
    assert (tmp_path / "obj").read_bytes() == bytes(range(64))


def test_a_name_is_registered_once(memory: SharedMemory) -> None:
    memory.register("r", "obj", 0, 8)
    with pytest.raises(AlreadyExists, match=r"'r' is already registered \(key 'obj'\); unregister it first"):
        memory.register("r", "obj", 8, 8)
    memory.unregister("r")
    memory.register("r", "obj", 8, 8)
    assert memory.status("r") == [RegionStatus("r", "obj", 8, 8)]


@pytest.mark.parametrize("key", ["", "/", "../obj", "a/b", "/a/b", "//obj", ".", "..", "x\0", "k" * 256])
def test_a_key_that_is_not_one_plain_name_is_refused(key: str) -> None:
    with pytest.raises(InvalidArgument, match="is not the name of a POSIX shared-memory object"):
        shm_path(key)


def test_a_key_names_an_object_under_the_directory() -> None:
    assert shm_path("/input_data") == shm_path("input_data") == Path("/dev/shm/input_data")


@pytest.mark.parametrize(
    ("key", "offset", "byte_size", "error", "message"),
    [
        ("absent", 0, 8, NotFound, "there is no shared-memory object 'absent'"),
        ("obj", 60, 8, InvalidArgument, "has 64 bytes, but the region asks for 68"),
        ("obj", 0, 0, InvalidArgument, "a byte_size of at least 1"),
        ("dir", 0, 8, InvalidArgument, "'dir' is not a shared-memory object"),
        ("link", 0, 8, InvalidArgument, "'link' is not a shared-memory object"),
    ],
)
def test_a_region_outside_a_regular_object_is_refused(
    memory: SharedMemory,
    tmp_path: Path,
    key: str,
    offset: int,
    byte_size: int,
    error: type[Exception],
    message: str,
) -> None:
    (tmp_path / "dir").mkdir()
    # A link could lead the daemon to write any file it may write.
    os.symlink(tmp_path / "obj", tmp_path / "link")
    with pytest.raises(error, match=message):
        memory.register("r", key, offset, byte_size)
    assert memory.status() == []


def test_a_lease_reads_and_writes_within_its_region(memory: SharedMemory, tmp_path: Path) -> None:
    memory.register("r", "obj", 16, 32)
    with memory.lease() as lease:
        assert lease.read(TensorPlace("r", 4, 8), 8, "input 'x'") == bytes(range(20, 28))
        lease.write(TensorPlace("r", 24, 8), b"\xff" * 8, "output 'y'")
        with pytest.raises(InvalidArgument, match=r"input 'x' has shared_memory_byte_size 8, but .* need 4"):
            lease.read(TensorPlace("r", 0, 8), 4, "input 'x'")
        with pytest.raises(InvalidArgument, match=r"8 bytes at offset 28 do not fit in .*'r', which has 32"):
            lease.reserve(TensorPlace("r", 28, 8), "output 'y'")
        with pytest.raises(InvalidArgument, match="output 'y' has 9 bytes, more than the 8"):
            lease.write(TensorPlace("r", 0, 8), b"\0" * 9, "output 'y'")
        with pytest.raises(NotFound, match="output 'z' names shared-memory region 'other', which is not"):
            lease.reserve(TensorPlace("other", 0, 8), "output 'z'")
    assert (tmp_path / "obj").read_bytes()[40:48] == b"\xff" * 8


def test_an_object_truncated_after_registration_is_refused_not_touched_past_its_end(
    memory: SharedMemory, tmp_path: Path
) -> None:
    # Through a mapping, touching it past the object's end would kill the daemon (SIGBUS).
    memory.register("r", "obj", 0, 64)
    os.truncate(tmp_path / "obj", 16)
    with memory.lease() as lease:
        assert lease.read(TensorPlace("r", 8, 8), 8, "input 'x'") == bytes(range(8, 16))
        with pytest.raises(FailedPrecondition, match="input 'x': shared-memory object 'obj' is smaller"):
            lease.read(TensorPlace("r", 8, 16), 16, "input 'x'")
        with pytest.raises(
            FailedPrecondition, match=r"output .y.: .* \(it was truncated since\); register it again"
        ):
            lease.write(TensorPlace("r", 32, 8), b"\1" * 8, "output 'y'")
    assert (tmp_path / "obj").stat().st_size == 16


def test_a_region_unregistered_while_in_use_stays_open_until_the_request_ends(memory: SharedMemory) -> None:
    memory.register("r", "obj", 0, 64)
    with memory.lease() as lease:
        place = TensorPlace("r", 0, 8)
        lease.reserve(place, "output 'y'")
        memory.unregister("r")
        # The name is free at once; the request still writes where it was told.
        memory.register("r", "obj", 32, 8)
        lease.write(place, b"\1" * 8, "output 'y'")
    memory.close()
    assert memory.status() == []
