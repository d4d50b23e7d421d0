"""The change feed's kinds for a head written before heads kept a model's steps (next_version,
alias_events, deployment_revision) or created_at: compared as before, until the model's next
change records them."""

from __future__ import annotations

from typing import Any

from tesserad.replica.changes import (
    ALIAS_MOVED,
    DEPLOYMENT_CHANGED,
    SERVING_CONFIG_CHANGED,
    VERSION_DELETED,
    VERSION_REGISTERED,
    _kinds,
)

OLD_HEAD: dict[str, Any] = {"latest_version": 2, "version_count": 2, "aliases": {"a": 1}, "deployment": None}


def now(**changed: Any) -> dict[str, Any]:
    steps = {
        "next_version": 4,
        "alias_events": 9,
        "deployment_revision": 3,
        "first_version": 1,
        "numbers_skipped": 0,
        "created_at": 1.0,
    }
    return {**OLD_HEAD, **steps, **changed}


def test_an_old_head_tells_what_its_numbers_tell() -> None:
    assert _kinds(OLD_HEAD, now(latest_version=3)) == (VERSION_REGISTERED,)
    assert _kinds(OLD_HEAD, now(version_count=1)) == (VERSION_DELETED,)
    assert _kinds(OLD_HEAD, now(aliases={"a": 2})) == (ALIAS_MOVED,)
    assert _kinds(OLD_HEAD, now(deployment={"revision": 4})) == (DEPLOYMENT_CHANGED,)


def test_an_old_head_misses_what_only_the_steps_tell() -> None:
    # A version registered and another deleted, an alias moved and back, a deployment rolled back.
    assert _kinds(OLD_HEAD, now()) == ()


def test_numbers_skipped_are_no_versions_registered_or_deleted() -> None:
    head = now()
    assert _kinds(head, now(next_version=7, numbers_skipped=3)) == ()
    # A head from before heads kept the count: the numbers were skipped after it.
    older = {k: v for k, v in head.items() if k != "numbers_skipped"}
    assert _kinds(older, now(next_version=7, numbers_skipped=3)) == ()
    assert _kinds(head, now(next_version=8, numbers_skipped=3, latest_version=7, version_count=3)) == (
        VERSION_REGISTERED,
    )


def test_a_saved_serving_config_is_a_change_and_an_old_head_had_none() -> None:
    assert _kinds(OLD_HEAD, now(serving_configs={})) == ()
    saved = now(serving_configs={"2": {"max_batch_size": 4}})
    assert _kinds(OLD_HEAD, saved) == (SERVING_CONFIG_CHANGED,)
    assert _kinds(saved, now(serving_configs={"2": {"max_batch_size": 8}})) == (SERVING_CONFIG_CHANGED,)
    assert _kinds(saved, now(serving_configs={})) == (SERVING_CONFIG_CHANGED,)
    assert _kinds(saved, saved) == ()
