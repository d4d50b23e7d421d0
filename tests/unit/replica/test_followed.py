"""The replica's followed registry: versions the change feed does not carry are fetched from
the primary once, and forgotten when their model changes (the change may have deleted them); a
model deleted and created again is told from the one before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tesserad.errors import NotFound
from tesserad.replica.blob_cache import BlobCache
from tesserad.replica.followed import FollowedModel, FollowedRegistry, FollowedVersion


def record(version: int) -> FollowedVersion:
    return FollowedVersion(version, "onnx", f"{version:064x}", 10, None, None)


class Primary:
    """Has versions 1 to 3 of "m"; counts the record fetches."""

    def __init__(self) -> None:
        self.fetches: list[tuple[str, int]] = []

    def fetch_version(self, model: str, version: int) -> FollowedVersion | None:
        self.fetches.append((model, version))
        return record(version) if model == "m" and version <= 3 else None


@pytest.fixture
def primary() -> Primary:
    return Primary()


@pytest.fixture
def followed(tmp_path: Path, primary: Primary) -> FollowedRegistry:
    registry = FollowedRegistry(
        "primary:50051", BlobCache(tmp_path, 1 << 20), lambda m, v, sha256: [], primary.fetch_version
    )
    registry.apply(1, "m", FollowedModel(3, {}, None, {3: record(3)}))
    registry.apply(2, "other", FollowedModel(1, {}, None, {1: record(1)}))
    return registry


def test_a_version_outside_the_feed_is_fetched_once(followed: FollowedRegistry, primary: Primary) -> None:
    assert followed.servable("m", None, None).version == 3
    assert primary.fetches == []
    assert followed.servable("m", 1, None).version == 1
    assert followed.servable("m", 1, None).version == 1
    assert primary.fetches == [("m", 1)]


def test_a_change_to_the_model_forgets_its_fetched_versions(
    followed: FollowedRegistry, primary: Primary
) -> None:
    followed.servable("m", 1, None)
    followed.apply(3, "other", None)  # another model's change keeps them
    followed.servable("m", 1, None)
    assert primary.fetches == [("m", 1)]
    followed.apply(4, "m", FollowedModel(3, {}, None, {3: record(3)}))
    followed.servable("m", 1, None)
    assert primary.fetches == [("m", 1), ("m", 1)]


def test_a_version_the_primary_lacks_is_not_found(followed: FollowedRegistry) -> None:
    with pytest.raises(NotFound, match="model 'm' has no version 7"):
        followed.servable("m", 7, None)


def test_a_model_created_again_after_its_deletion_is_told_from_the_one_before(
    followed: FollowedRegistry,
) -> None:
    first = followed.model_identity("m")
    assert followed.model_identity("other") != first
    followed.apply(3, "m", FollowedModel(4, {}, None, {4: record(4)}))  # a change keeps it
    assert followed.model_identity("m") == first
    followed.apply(4, "m", None)
    with pytest.raises(NotFound, match="model 'm' does not exist at the primary primary:50051"):
        followed.model_identity("m")
    followed.apply(5, "m", FollowedModel(1, {}, None, {1: record(1)}))
    assert followed.model_identity("m") != first


def test_a_model_created_again_in_one_change_is_told_from_the_one_before(followed: FollowedRegistry) -> None:
    """The feed gives a model's deletion and its creation again as one change (MODEL_CREATED for
    a model this replica holds) when the primary recorded them as one; a change recorded before
    changes carried created_at tells it by its kinds only."""
    first = followed.model_identity("m")
    followed.apply(3, "m", FollowedModel(1, {}, None, {1: record(1)}), created=True)
    assert followed.model_identity("m") != first


def test_a_model_created_again_is_told_by_when_it_was_created_whatever_the_kinds(
    followed: FollowedRegistry,
) -> None:
    """The primary compacts a model's deletion and creation away when newer changes follow them
    (an alias moved, say) before this replica reads them: the change it gets says nothing of
    either, but carries when the model was created."""
    followed.apply(3, "made", FollowedModel(1, {}, None, {1: record(1)}, created_at=100.0))
    first = followed.model_identity("made")
    followed.apply(4, "made", FollowedModel(1, {"prod": 1}, None, {1: record(1)}, created_at=100.0))
    assert followed.model_identity("made") == first
    followed.apply(7, "made", FollowedModel(1, {"prod": 1}, None, {1: record(1)}, created_at=200.0))
    second = followed.model_identity("made")
    assert second != first
    # A creation time that says it is the model held: the kinds cannot make it another.
    followed.apply(
        8, "made", FollowedModel(2, {"prod": 1}, None, {2: record(2)}, created_at=200.0), created=True
    )
    assert followed.model_identity("made") == second


def test_a_version_known_without_the_primary_is_one_the_feed_gave_or_fetched_since_its_change(
    followed: FollowedRegistry, primary: Primary
) -> None:
    """What readiness reads: never a fetch from the primary (a probe must not wait on it)."""
    known = followed.known_servable("m", 3)
    assert known is not None and known.artifact_sha256 == record(3).sha256
    assert followed.known_servable("m", 1) is None
    followed.servable("m", 1, None)
    assert followed.known_servable("m", 1) is not None
    followed.apply(3, "m", FollowedModel(3, {}, None, {3: record(3)}))
    assert followed.known_servable("m", 1) is None
    assert primary.fetches == [("m", 1)]
    with pytest.raises(NotFound, match="model 'gone' does not exist"):
        followed.known_servable("gone", 1)


def test_following_from_the_start_serves_what_is_held_until_the_replay_drops_what_it_did_not_give(
    followed: FollowedRegistry,
) -> None:
    """The primary is another registry now (restored from an older backup, or started empty):
    its feed is replayed from 0, and what the replica held beyond it goes once the replay caught up."""
    followed.restart()
    assert followed.seq == 0
    assert followed.servable("other", None, None).version == 1  # still held while the replay runs
    followed.apply(1, "m", FollowedModel(2, {}, None, {2: record(2)}))
    assert followed.drop_unconfirmed() == ["other"]
    assert followed.model_names() == ["m"]
    assert followed.servable("m", None, None).version == 2
    with pytest.raises(NotFound, match="model 'other' does not exist at the primary"):
        followed.servable("other", None, None)
    assert followed.drop_unconfirmed() == []  # each catch-up after drops nothing more


def test_another_store_at_the_primary_is_told_by_its_incarnation(followed: FollowedRegistry) -> None:
    """A primary restored from a backup, or started on another data directory, answers from a store
    of another incarnation whatever its change numbers: nothing of it is applied onto what is held
    until the replica follows it from the start."""
    assert followed.same_store("first")  # the first answer: the store followed from now on
    assert followed.same_store("first")
    assert not followed.same_store("restored")
    assert followed.store_incarnation == "first"
    followed.restart()
    assert followed.same_store("restored")
    assert followed.store_incarnation == "restored"


def test_a_primary_that_does_not_say_its_incarnation_is_told_by_its_change_numbers_alone(
    followed: FollowedRegistry,
) -> None:
    """An older tesserad sends no incarnation: its answers continue what is held (a primary whose
    newest change is older than the replica's refuses its watch, as before). Upgraded, it says one,
    which is followed from then on; downgraded again, it says none, and the one followed stays."""
    assert followed.same_store("")
    assert followed.store_incarnation == ""
    assert followed.same_store("upgraded")
    assert followed.same_store("")
    assert followed.store_incarnation == "upgraded"
    assert not followed.same_store("another")
