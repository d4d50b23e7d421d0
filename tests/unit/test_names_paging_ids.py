"""Names, page tokens and ids (pure logic)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from tesserad import names
from tesserad.errors import InvalidArgument
from tesserad.ids import new_id
from tesserad.names import ReferenceTally, did_you_mean, named_versions, validate_name
from tesserad.paging import (
    MAX_PAGE_BYTES,
    MAX_PAGE_SIZE,
    PageFill,
    answer_bytes,
    make_token,
    page_size,
    read_page,
    resume_after,
)
from tesserad.store import Store, pack


@pytest.mark.parametrize("name", ["a", "resnet-50", "clips.v2", "x_1", "9", "a" * 128])
def test_valid_names(name):
    assert validate_name("model", name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", ".hidden", "a b", "a/b", "../etc", "a" * 129, "é", "a\n"])
def test_invalid_names_say_what_is_allowed(name):
    with pytest.raises(InvalidArgument) as err:
        validate_name("model", name)
    assert "model" in err.value.message


def test_an_invalid_name_is_shown_whole_up_to_the_longest_name_and_cut_beyond() -> None:
    with pytest.raises(InvalidArgument) as short:
        validate_name("model", "Clips")
    assert short.value.message == (
        "model 'Clips' is not a valid name: use 1 to 128 characters from a-z, 0-9, '.', '_' and '-', "
        "starting with a letter or digit"
    )
    with pytest.raises(InvalidArgument) as longest:
        validate_name("model", "A" * 128)
    assert repr("A" * 128) in longest.value.message
    with pytest.raises(InvalidArgument) as pasted:
        validate_name("model", "x" * 1000)
    assert pasted.value.message == (
        f"model {'x' * 64!r}… (1,000 characters) is not a valid name: use 1 to 128 characters from a-z, "
        "0-9, '.', '_' and '-', starting with a letter or digit"
    )


def test_did_you_mean_reads_only_the_names_beside_the_missing_one(tmp_path: Path, monkeypatch):
    """A near miss is found among the names that sort beside the missing one, so a registry
    with many names costs no more than one with a thousand."""
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=["models"])
    try:
        with store.write() as txn:
            for name in ["aaa-cnn4d", "aab-1", "aab-2", "clips-cnn4d", "clips-mlp"]:
                txn.put("models", (name,), b"")
        with store.read() as txn:
            assert did_you_mean(txn, "models", "clips-cnn4") == "did you mean 'clips-cnn4d'? "
            assert did_you_mean(txn, "models", "aab-cnn4d") == "did you mean 'aaa-cnn4d'? "
            assert did_you_mean(txn, "models", "resnet") == ""
            monkeypatch.setattr(names, "NEAR_NAMES_EACH_SIDE", 2)
            # aaa-cnn4d sorts three names before aab-cnn4d; clips-cnn4d, next after it, is the nearest read
            assert did_you_mean(txn, "models", "aab-cnn4d") == "did you mean 'clips-cnn4d'? "
            assert did_you_mean(txn, "models", "clips-cnn4") == "did you mean 'clips-cnn4d'? "
    finally:
        store.close()


def test_named_versions_yields_the_references_that_name_a_version_and_tallies_the_rest() -> None:
    """A record may hold anything: what names no version is counted, never raised; 0 names none
    (the newest version) and is neither yielded nor passed over."""
    references: list[tuple[object, object]] = [
        ("m", 3),
        ("m", 0),
        ("m", 2**63 - 1),
        ("m", 2**63 - 2),
        ("Not A Name", 1),
        ("m", "2"),
        ("m", True),
        ("m", -1),
        (None, 4),
        ("old\n", 7),
    ]
    tally = ReferenceTally()
    assert list(named_versions(references, tally)) == [("m", 3), ("m", 2**63 - 2), ("old\n", 7)]
    assert tally.read == 10
    assert tally.passed_over == 6
    assert tally.shown == [("m", 2**63 - 1), ("Not A Name", 1), ("m", "2"), ("m", True), ("m", -1), (None, 4)]


def test_named_versions_counts_every_reference_passed_over_and_keeps_the_first_ten() -> None:
    tally = ReferenceTally()
    references: list[tuple[object, object]] = [("Bad", n) for n in range(1, 26)]
    assert list(named_versions(references, tally)) == []
    assert tally.passed_over == 25
    assert tally.shown == [("Bad", n) for n in range(1, 11)]


def test_a_tally_warns_with_the_references_passed_over_and_only_if_there_were_any(caplog) -> None:
    log = logging.getLogger("tesserad.test_names")
    caplog.set_level("INFO", logger=log.name)
    clean = ReferenceTally()
    list(named_versions([("m", 1), ("m", 0)], clean))
    clean.warn_passed_over(log, "passed over")
    assert not caplog.records
    tally = ReferenceTally()
    list(named_versions([("m", 1), ("m", 2**64)], tally))
    tally.warn_passed_over(log, "passed over")
    [warning] = caplog.records
    assert (warning.levelname, warning.getMessage()) == ("WARNING", "passed over")
    assert (warning.references, warning.shown) == (1, [("m", 2**64)])


def test_page_size_defaults_and_caps():
    assert page_size(0) == 100
    assert page_size(5) == 5
    assert page_size(10**6) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument, match="page_size must be >= 0"):
        page_size(-1)


def test_a_page_ends_once_its_rows_take_max_page_bytes_and_always_holds_one(tmp_path: Path):
    store = Store.open(tmp_path / "store", map_size=64 * 2**20, tables=["rows"])
    sizes = {"a": 10, "b": MAX_PAGE_BYTES // 2, "c": MAX_PAGE_BYTES // 2, "d": 2 * MAX_PAGE_BYTES, "e": 10}
    try:
        with store.write() as txn:
            for name, size in sizes.items():
                txn.put("rows", (name,), b"x" * size)
        pages, token = [], ""
        with store.read() as txn:
            while True:
                # Items with their rows: a page sizes the items it answers.
                page = read_page(
                    txn,
                    "rows",
                    query={},
                    page_token=token,
                    requested_size=0,
                    item=lambda key, raw: (key[0], raw),
                )
                pages.append([name for name, _ in page.items])
                token = page.next_page_token
                if not token:
                    break
        # a, b and c would take past the bound; d alone is over it, and still listed.
        assert pages == [["a", "b"], ["c"], ["d"], ["e"]]
    finally:
        store.close()


def test_a_page_filled_from_decoded_items_ends_at_its_size_or_bytes_with_a_token_after_its_last():
    by_count: PageFill[str] = PageFill(2, {"q": 1})
    for name in "abc":
        if not by_count.room(1):
            break
        by_count.add((name,), name)
    assert by_count.page.items == ["a", "b"]
    assert resume_after(by_count.page.next_page_token, {"q": 1}) == pack(("b",))

    by_bytes: PageFill[str] = PageFill(0, {})
    assert by_bytes.room(2 * MAX_PAGE_BYTES)  # a page always holds one item
    by_bytes.add(("big",), "big")
    assert not by_bytes.room(1)
    assert resume_after(by_bytes.page.next_page_token, {}) == pack(("big",))

    last: PageFill[str] = PageFill(2, {})
    for name in "ab":
        assert last.room(1)
        last.add((name,), name)
    assert last.page.next_page_token == ""  # no further item was offered: no token


def test_page_token_round_trip_and_query_binding():
    token = make_token(pack(("key",)), {"prefix": "a"})
    assert resume_after(token, {"prefix": "a"}) == pack(("key",))
    assert resume_after("", {"prefix": "a"}) is None
    with pytest.raises(InvalidArgument, match="different query"):
        resume_after(token, {"prefix": "b"})
    with pytest.raises(InvalidArgument, match="not one this server issued"):
        resume_after("garbage!", {"prefix": "a"})
    with pytest.raises(InvalidArgument, match="not one this server issued"):
        resume_after(make_token(b"\xff\x00", {"prefix": "a"}), {"prefix": "a"})


def test_ids_are_unique_and_time_ordered():
    ids = [new_id("job") for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.startswith("job-") and len(i) == 22 for i in ids)
    first, later = ids[0], new_id("job")
    assert first[:14] <= later[:14]


def test_ids_made_in_one_millisecond_or_after_the_clock_stepped_back_keep_their_order(monkeypatch):
    """Newest-first lists order runs by id: a sweep's runs made in one millisecond must list in
    the order they were made, not by their random bits."""
    clock = [1_700_000_000_000_000_000]
    monkeypatch.setattr("tesserad.ids.time.time_ns", lambda: clock[0])
    same_ms = [new_id("run") for _ in range(200)]
    clock[0] -= 5_000_000  # the wall clock steps back 5 ms
    stepped_back = [new_id("run") for _ in range(20)]
    clock[0] += 60_000_000
    later = new_id("run")
    made = same_ms + stepped_back + [later]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_answer_bytes_counts_each_entrys_tags_and_lengths_beside_its_text():
    @dataclass
    class Record:
        name: str
        version: int
        aliases: dict[str, int]
        tags: tuple[str, ...]

    record = Record("m", 1, {"a": 1, "é": 2}, ("x", "yz"))
    # A string: its UTF-8 and 6 bytes; a number 16; a map entry 6 beside its key and value; the record 6.
    entries = (6 + (1 + 6) + 16) + (6 + (2 + 6) + 16)
    assert answer_bytes(record) == 6 + (1 + 6) + 16 + entries + (1 + 6) + (2 + 6)
