"""`tessera models push` of a file that is not what it claims: the daemon's reason, and no path
on the server in it."""

from __future__ import annotations


def test_a_garbage_onnx_push_says_why_and_names_no_server_path(tessera_cli, tmp_path, data_dir):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"garbage, not onnx" * 10)
    result = tessera_cli("models", "push", "m", str(model))
    assert result.code == 1 and result.err.startswith("tessera: INVALID_ARGUMENT: "), result.err
    assert "not a valid ONNX model" in result.err
    assert str(data_dir) not in result.err and "blobs" not in result.err, result.err
