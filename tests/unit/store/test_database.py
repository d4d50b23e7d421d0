"""The LMDB store: transactions, scans, group commit, durability and a full map."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tesserad.errors import ResourceExhausted
from tesserad.store import Store, decode_record, encode_record, pack, pack_int, trailing_int


@pytest.fixture
def store(tmp_path: Path):
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=["items", "other"])
    yield store
    store.close()


def test_write_is_atomic(store: Store) -> None:
    with pytest.raises(RuntimeError), store.write() as txn:
        txn.put("items", ("a",), b"1")
        raise RuntimeError("interrupted")
    with store.read() as txn:
        assert txn.get("items", ("a",)) is None


def test_scan_bounds_and_direction(store: Store) -> None:
    with store.write() as txn:
        for run in ("r1", "r2"):
            for step in range(5):
                txn.put("items", (run, step), str(step).encode())
    with store.read() as txn:
        assert [k[1] for k, _ in txn.scan("items", ("r1",))] == [0, 1, 2, 3, 4]
        assert [k[1] for k, _ in txn.scan("items", ("r1",), reverse=True, limit=2)] == [4, 3]
        assert [k[1] for k, _ in txn.scan("items", ("r1",), after=("r1", 2))] == [3, 4]
        assert [k[1] for k, _ in txn.scan("items", ("r1",), start=("r1", 2))] == [2, 3, 4]
        assert [k[1] for k, _ in txn.scan("items", ("r2",), after=("r2", 2), reverse=True)] == [1, 0]
        assert [k[1] for k, _ in txn.scan("items", ("r2",), start=("r2", 2), reverse=True)] == [2, 1, 0]
        assert txn.count("items") == 10 and txn.count("items", ("r2",)) == 5
        assert list(txn.scan("items", ("r3",))) == []


def test_count_under_a_prefix_counts_what_a_scan_finds(store: Store) -> None:
    """Counted on packed keys: a prefix is a whole component ("r1" is not a prefix of "r10"), and a
    prefix past the last key, or a table the store has not made yet, counts none."""
    with store.write() as txn:
        for run, steps in (("r1", 3), ("r10", 4), ("r2", 2)):
            for step in range(steps):
                txn.put("items", (run, step), b"")
    with store.read() as txn:
        for prefix in (("r1",), ("r10",), ("r2",), ("r2", 1), ("r3",), ("a",), ("r1", 5)):
            assert txn.count("items", prefix) == len(list(txn.scan("items", prefix))), prefix
        assert [txn.count("items", (run,)) for run in ("r1", "r10", "r2", "r3")] == [3, 4, 2, 0]
        assert txn.count("other", ("r1",)) == 0


def test_packed_keys_and_inclusive_packed_ranges(store: Store) -> None:
    prefix = pack(("r1",))
    with store.write() as txn:
        for run in ("r1", "r2"):
            for step in (0, 5, 2**63 - 1):
                txn.put("items", (run, step), str(step).encode())
        assert not txn.put_packed("items", prefix + pack_int(5), b"again", overwrite=False)
        assert txn.put_packed("items", prefix + pack_int(7), b"7")
        assert txn.delete_packed("items", prefix + pack_int(0)) and not txn.delete_packed(
            "items", prefix + pack_int(0)
        )
    with store.read() as txn:
        assert txn.get_packed("items", prefix + pack_int(5)) == b"5"

        def steps(first: int, last: int, **kwargs) -> list[int]:
            found = txn.packed_range("items", prefix + pack_int(first), prefix + pack_int(last), **kwargs)
            return [trailing_int(key) for key, _ in found]

        assert steps(0, 2**63 - 1) == [5, 7, 2**63 - 1]  # the last key itself is in the range
        assert steps(5, 7) == [5, 7] and steps(6, 6) == []
        assert steps(0, 2**63 - 1, reverse=True, limit=2) == [2**63 - 1, 7]


def test_put_without_overwrite_keeps_the_first(store: Store) -> None:
    with store.write() as txn:
        assert txn.put("items", ("k",), b"first", overwrite=False)
        assert not txn.put("items", ("k",), b"second", overwrite=False)
    with store.read() as txn:
        assert txn.get("items", ("k",)) == b"first"


def test_delete_range(store: Store) -> None:
    with store.write() as txn:
        for i in range(3):
            txn.put("items", ("x", i), b"")
        txn.put("items", ("y", 0), b"")
    with store.write() as txn:
        assert txn.delete_range("items", ("x",)) == 3
    with store.read() as txn:
        assert [k for k, _ in txn.scan("items")] == [("y", 0)]


def test_group_commit_batches_writers_and_isolates_failures(store: Store) -> None:
    def put(i: int):
        def work(txn):
            if i == 7:
                raise ValueError("bad point")
            txn.put("items", ("p", i), b"v")
            return i

        return work

    started, submitted = threading.Event(), threading.Event()

    def held(txn):
        started.set()
        submitted.wait(10)

    store.submit(held)
    started.wait(5)
    # Everything submitted while a commit runs shares the next one. The first commit is held
    # until all 200 are in, however slowly a busy machine submits them.
    futures = [store.submit(put(i)) for i in range(200)]
    submitted.set()
    results = []
    for i, future in enumerate(futures):
        if i == 7:
            with pytest.raises(ValueError, match="bad point"):
                future.result(timeout=10)
        else:
            results.append(future.result(timeout=10))
    assert results == [i for i in range(200) if i != 7]
    assert store.group_commits == 2  # the slow write's commit, then all 200 together
    with store.read() as txn:
        assert txn.count("items", ("p",)) == 199


def test_submit_all_shares_one_commit_and_fails_each_write_alone(store: Store) -> None:
    def put(i: int):
        def work(txn):
            txn.put("items", ("q", i), b"v")
            if i == 3:
                raise ValueError("bad item")
            return i

        return work

    store.flush()
    before = store.group_commits
    futures = store.submit_all([put(i) for i in range(6)])
    with pytest.raises(ValueError, match="bad item"):
        futures[3].result(timeout=10)
    assert [f.result(timeout=10) for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4, 5]
    assert store.group_commits == before + 1
    with store.read() as txn:
        assert [key[1] for key, _ in txn.scan("items", ("q",))] == [0, 1, 2, 4, 5]


def test_writes_submitted_together_share_one_commit_waited_for_and_fail_each_alone(store: Store) -> None:
    def put(i: int):
        def work(txn):
            txn.put("items", ("t", i), b"v")
            if i == 3:
                raise ValueError("bad item")

        return work

    store.flush()
    before = store.group_commits
    with store.together():
        # Submitted one by one, while the committer would take each as it came.
        futures = [store.submit(put(i)) for i in range(6)]
        assert not any(f.done() for f in futures)
    assert all(f.done() for f in futures)  # its end waited for the commit
    with pytest.raises(ValueError, match="bad item"):
        futures[3].result()
    assert store.group_commits == before + 1
    with store.read() as txn:
        assert [key[1] for key, _ in txn.scan("items", ("t",))] == [0, 1, 2, 4, 5]
    with store.together():
        pass
    assert store.group_commits == before + 1  # nothing submitted: nothing committed


def _put(key: str):
    def work(txn):
        txn.put("items", (key,), b"v")

    return work


def _write_now(store: Store) -> None:
    with store.write() as txn:
        txn.put("items", ("b",), b"v")


def _nest(store: Store) -> None:
    with store.together():
        store.submit(_put("b"))


def _stored(store: Store) -> list[str]:
    with store.read() as txn:
        return [str(key[0]) for key, _ in txn.scan("items")]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        # It waited for the writes held until the block's end: forever.
        (lambda store: store.flush(), "Store.flush inside Store.together() would wait forever"),
        # It committed before the writes submitted ahead of it.
        (_write_now, "Store.write inside Store.together() would commit before"),
        (
            lambda store: store.submit_all([_put("b")]),
            "Store.submit_all inside Store.together() would commit",
        ),
        # Its end came before its writes were committed (they waited for the outer one's), and
        # its body's error left them to the outer one to commit.
        (_nest, "Store.together inside Store.together() would end before its writes were committed"),
    ],
    ids=["flush", "write", "submit_all", "together"],
)
def test_a_call_that_would_hang_or_reorder_inside_together_is_refused(store: Store, call, words: str) -> None:
    with store.together():
        held = store.submit(_put("a"))
        with pytest.raises(RuntimeError, match=re.escape(words)):
            call(store)
        assert not held.done()
    assert held.result() is None
    assert _stored(store) == ["a"]


def test_together_whose_body_raises_makes_none_of_its_writes_and_raises_the_bodys_error(store: Store) -> None:
    # The held writes were committed anyway, and never waited for.
    with pytest.raises(ValueError, match="interrupted"), store.together():
        held = [store.submit(_put(key)) for key in ("a", "b")]
        raise ValueError("interrupted")
    assert all(future.cancelled() for future in held)
    store.flush()
    assert _stored(store) == []


def test_together_whose_body_raises_on_a_closed_store_raises_the_bodys_error(store: Store) -> None:
    # "the store is closed", raised while the body's error was on its way, took its place.
    with pytest.raises(ValueError, match="interrupted"), store.together():
        held = store.submit(_put("a"))
        store.close()
        raise ValueError("interrupted")
    assert held.cancelled()


def test_a_write_cancelled_while_queued_is_not_made_and_the_writes_after_it_are(store: Store) -> None:
    # An RPC cancelled by its client (a cut connection, a deadline) cancels the future it
    # awaits; the committer once set that future's result anyway, died on the error, and left
    # every later write of the daemon waiting forever.
    started, release = threading.Event(), threading.Event()

    def held(txn):
        started.set()
        release.wait(10)

    store.submit(held)
    started.wait(10)
    cancelled = store.submit(lambda txn: txn.put("items", ("cancelled",), b"v"))
    assert cancelled.cancel()
    release.set()
    store.submit(lambda txn: txn.put("items", ("after",), b"v")).result(timeout=10)
    with store.read() as txn:
        assert [key for key, _ in txn.scan("items", ())] == [("after",)]


def test_a_write_whose_commit_has_begun_cannot_be_cancelled_and_gives_its_outcome(store: Store) -> None:
    started, release = threading.Event(), threading.Event()

    def held(txn):
        txn.put("items", ("held",), b"v")
        started.set()
        release.wait(10)
        return "stored"

    running = store.submit(held)
    started.wait(10)
    assert not running.cancel()
    release.set()
    assert running.result(timeout=10) == "stored"
    store.submit(lambda txn: txn.put("items", ("after",), b"v")).result(timeout=10)
    with store.read() as txn:
        assert [key for key, _ in txn.scan("items", ())] == [("after",), ("held",)]


def test_concurrent_writers_from_threads(store: Store) -> None:
    def writer(n: int) -> None:
        for i in range(50):
            store.submit(lambda txn, i=i: txn.put("items", (n, i), b"")).result()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with store.read() as txn:
        assert txn.count("items") == 200


def test_map_full_is_resource_exhausted_and_loses_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", map_size=1 * 2**20, tables=["items"])
    try:
        with store.write() as txn:
            txn.put("items", ("keep",), b"1")
        with (
            pytest.raises(ResourceExhausted, match=r"store.map_size.*TESSERA_STORE_MAP_SIZE"),
            store.write() as txn,
        ):
            for i in range(10_000):
                txn.put("items", (i,), os.urandom(512))
        with pytest.raises(ResourceExhausted):
            store.submit(lambda txn: txn.put("items", ("big",), os.urandom(4 * 2**20))).result()
        with store.read() as txn:
            assert txn.get("items", ("keep",)) == b"1" and txn.count("items") == 1
    finally:
        store.close()


def fill_to_the_reserve(store: Store) -> int:
    """Ordinary writes of 512 bytes until the store refuses one; returns how many fitted."""
    for i in range(100_000):
        try:
            store.submit(lambda txn, i=i: txn.put("items", (i,), os.urandom(512))).result()
        except ResourceExhausted:
            return i
    raise AssertionError("every write fitted: the map never filled up")


def test_the_last_part_of_the_map_is_kept_for_reserved_writes(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", map_size=2**20, durability="relaxed", tables=["items"])
    try:
        fitted = fill_to_the_reserve(store)
        with pytest.raises(ResourceExhausted, match=r"store.map_size"), store.write() as txn:
            txn.put("items", ("late",), os.urandom(512))
        # A write that ends something fits, in a batch or alone, and a read-only write passes.
        store.submit(lambda txn: txn.put("items", ("end",), os.urandom(4096)), reserved=True).result()
        with store.write(reserved=True) as txn:
            txn.put("items", ("end2",), os.urandom(4096))
        with store.write() as txn:
            assert txn.get("items", ("end",)) is not None
        # Deleting makes room for ordinary writes again.
        with store.write() as txn:
            for i in range(fitted // 2):
                txn.delete("items", (i,))
        with store.write() as txn:
            txn.put("items", ("after",), os.urandom(512))
    finally:
        store.close()


def test_reopen_with_larger_map_size_keeps_data(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", map_size=2**20, tables=["items"])
    with store.write() as txn:
        txn.put("items", ("a",), b"1")
    store.close()
    store = Store.open(tmp_path / "s", map_size=2**24, tables=["items"])
    try:
        assert store.usage().map_size == 2**24
        with store.read() as txn:
            assert txn.get("items", ("a",)) == b"1"
    finally:
        store.close()


def test_sigkill_mid_writes_leaves_exactly_the_committed_records(tmp_path: Path) -> None:
    """Kill a writer in the middle of heavy writes: every acknowledged write is there, and
    every write is there whole or not at all (each writes ten records)."""
    script = textwrap.dedent(
        f"""
        import threading
        from pathlib import Path
        from tesserad.store import Store
        store = Store.open(Path({str(tmp_path / "s")!r}), map_size=2**26, tables=["items"])

        def work(txn, i):
            for part in range(10):
                txn.put("items", (i, part), bytes(200))

        def background():
            # Unacknowledged writes in flight when the kill lands.
            for i in range(1_000_000, 2_000_000):
                future = store.submit(lambda txn, i=i: work(txn, i))
                if i % 50 == 0:
                    future.result()

        threading.Thread(target=background, daemon=True).start()
        for i in range(100_000):
            store.submit(lambda txn, i=i: work(txn, i)).result()
            print(i, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 20:
            break
    assert acknowledged >= 20, "the writer died before it was killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store.open(tmp_path / "s", map_size=2**26, tables=["items"])
    try:
        with store.read() as txn:
            parts: dict[int, int] = {}
            for (i, _part), _ in txn.scan("items"):
                parts[i] = parts.get(i, 0) + 1
        assert all(count == 10 for count in parts.values()), "a write was torn"
        foreground = sorted(i for i in parts if i < 1_000_000)
        assert foreground[: acknowledged + 1] == list(range(acknowledged + 1))
    finally:
        store.close()


def test_records_round_trip_and_refuse_the_unknown() -> None:
    from tesserad.errors import DataLoss

    raw = encode_record("model", 1, {"name": "m"})
    assert decode_record(raw, "model", 1) == (1, {"name": "m"})
    with pytest.raises(DataLoss, match="upgrade tesserad"):
        decode_record(encode_record("model", 3, {}), "model", 1)
    with pytest.raises(DataLoss):
        decode_record(raw, "dataset", 1)
    with pytest.raises(DataLoss):
        decode_record(b"\x80garbage", "model", 1)


def test_a_map_the_address_space_cannot_hold_is_said_as_a_limit_not_as_damage(tmp_path: Path) -> None:
    """An open refused by the system (ENOMEM under an address-space limit) is no damaged store:
    FailedPrecondition in LMDB's words, with the limit to raise, not DataLoss and a restore."""
    opened = textwrap.dedent(
        f"""
        from pathlib import Path
        from tesserad.errors import TesseraError
        from tesserad.store import Store
        try:
            Store.open(Path({str(tmp_path / "store")!r}), map_size=8 << 30, tables=["items"])
        except TesseraError as exc:
            print(type(exc).__name__, exc)
        """
    )

    def limited() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run(
        [sys.executable, "-c", opened], capture_output=True, text=True, preexec_fn=limited, timeout=60
    )
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    assert said.startswith("FailedPrecondition the store file "), said
    assert "cannot be opened (LMDB says: Cannot allocate memory); its map (store.map_size" in said
    assert "ulimit -v" in said and "restore" not in said


def test_live_bytes_fall_after_deletes_where_the_high_water_mark_does_not(store: Store) -> None:
    # The store-full alert divides live_bytes, what the full-store check counts: used_bytes keeps
    # the freed pages LMDB reuses, and would keep the alert firing after deletes made room.
    with store.write() as txn:
        for i in range(64):
            txn.put("items", (i,), os.urandom(8192))
    full = store.usage()
    with store.write() as txn:
        for i in range(64):
            txn.delete("items", (i,))
    emptied = store.usage()
    assert emptied.used_bytes >= full.used_bytes
    assert emptied.live_bytes < full.live_bytes // 8
    assert full.live_bytes <= full.used_bytes
