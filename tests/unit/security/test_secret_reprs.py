"""Records holding a bearer token or a token's hash leave it out of their repr, which logs and
tracebacks show; the other fields still say which record it is."""

from __future__ import annotations

import hashlib

from tesserad.replica.changes import Replica
from tesserad.security.roles import Role
from tesserad.security.tokens import TokenEntry
from tesserad.training.ray_worker import DatasetFetch

SECRET = "tsr_s3cret-bearer-token"


def test_a_replicas_credential_is_left_out_of_its_repr() -> None:
    replica = Replica("10.0.0.7:50051", f"Bearer {SECRET}", tls=True)
    assert SECRET not in repr(replica)
    assert repr(replica) == "Replica(address='10.0.0.7:50051', tls=True)"


def test_a_dataset_fetchs_token_is_left_out_of_its_repr() -> None:
    fetch = DatasetFetch(
        target="127.0.0.1:50051",
        tls=None,
        token=SECRET,
        name="clips",
        version=3,
        sha256="ab" * 32,
        format="npz",
        array_name="",
        input_array="x",
        target_array="y",
        cache_size=0,
    )
    assert SECRET not in repr(fetch)
    assert "target='127.0.0.1:50051'" in repr(fetch) and "name='clips'" in repr(fetch)


def test_a_token_entrys_digest_is_left_out_of_its_repr() -> None:
    digest = hashlib.sha256(SECRET.encode()).digest()
    entry = TokenEntry("ci", Role.READER, digest)
    assert repr(digest) not in repr(entry) and digest.hex() not in repr(entry)
    assert "name='ci'" in repr(entry)
