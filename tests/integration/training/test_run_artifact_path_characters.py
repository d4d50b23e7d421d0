"""An artifact path becomes a file name when downloaded and a line in `tessera runs artifacts`:
UploadRunArtifact refuses control characters (a tab, an escape sequence that recolours a
terminal), line and paragraph separators, and format characters: the bidirectional controls
that show a path reversed ('\\u202etxt.exe' reads 'exe.txt') and the invisible ones (a zero-width
space); the zero-width non-joiner and joiner, which spelling needs, are kept. A refused upload
stores nothing."""

from __future__ import annotations

import grpc
import pytest

from tessera.v1 import training_pb2 as pb
from tessera.v1 import training_pb2_grpc


@pytest.fixture
def stub(channel: grpc.Channel) -> training_pb2_grpc.TrainingStub:
    return training_pb2_grpc.TrainingStub(channel)


def upload(stub: training_pb2_grpc.TrainingStub, run_id: str, path: str) -> pb.RunArtifact:
    header = pb.UploadRunArtifactHeader(run_id=run_id, path=path)
    return stub.UploadRunArtifact(
        iter([pb.UploadRunArtifactRequest(header=header), pb.UploadRunArtifactRequest(chunk=b"hello")])
    )


@pytest.mark.parametrize(
    ("path", "character"),
    [
        ("plots/a\tb.png", "U+0009"),
        ("logs/\x1b[31mred.txt", "U+001B"),
        ("a\x7f.txt", "U+007F"),
        ("a\x85.txt", "U+0085"),
        ("a\u2028b.txt", "U+2028"),
        ("\u202etxt.exe", "U+202E"),
        ("plots/\u2066x\u2069.png", "U+2066"),
        # Every other format character (Unicode's Cf) is invisible too: marks that reorder the
        # text beside them, and characters of no width.
        ("a\u200etxt.exe", "U+200E"),
        ("a\u200ftxt.exe", "U+200F"),
        ("a\u061ctxt.exe", "U+061C"),
        ("plots/a\u200bb.png", "U+200B"),
        ("plots/a\u200c\u200bb.png", "U+200B"),
        ("plots/a\u2060b.png", "U+2060"),
        ("\ufeffnotes.md", "U+FEFF"),
    ],
)
def test_a_path_with_a_character_that_hides_what_it_says_is_refused(
    stub: training_pb2_grpc.TrainingStub, path: str, character: str
) -> None:
    run_id = stub.CreateRun(pb.CreateRunRequest(experiment="paths")).run_id
    with pytest.raises(grpc.RpcError) as error:
        upload(stub, run_id, path)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == (
        f"header.path {path!r} holds {character}, a control or format character (invisible, or one that "
        "reorders the text beside it) that a listing or a terminal would not show as it is; give a "
        'relative path such as "plots/loss.png"'
    )
    assert stub.ListRunArtifacts(pb.ListRunArtifactsRequest(run_id=run_id)).artifacts == []


def test_spaces_and_letters_of_any_script_are_kept(stub: training_pb2_grpc.TrainingStub) -> None:
    run_id = stub.CreateRun(pb.CreateRunRequest(experiment="paths")).run_id
    # The zero-width non-joiner and joiner (U+200C, U+200D) are format characters that spelling
    # needs: Persian and Indic words, and emoji sequences.
    for path in (
        "plots/σ loss.png",
        "notes/résumé – final.md",
        "日本/図.png",
        "می\u200cخواهم.png",
        "क्\u200dष.txt",
        "\U0001f469\u200d\U0001f4bb/notes.md",
    ):
        assert upload(stub, run_id, path).path == path
