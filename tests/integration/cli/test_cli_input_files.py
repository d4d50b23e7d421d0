"""`--input` files that are not numpy's: the one line names the file and says what is read,
never numpy's offer to unpickle it nor an unexpected error."""

from __future__ import annotations

import io

import numpy as np

from tessera.cli import EXIT_FAILED


def test_predict_input_that_is_not_npz_or_npy_names_the_file_and_the_formats(tessera_cli, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('experiment = "clips"\n')
    result = tessera_cli("predict", "any-model", "--input", str(spec))
    assert result.code == EXIT_FAILED and "pickle" not in result.err, result.err
    assert result.err == (
        f"tessera: {spec}: not a .npz or .npy file; write one with numpy.savez(FILE, input=x) "
        "(an array per input name) or numpy.save(FILE, x)\n"
    )
    explained = tessera_cli("explain", "any-model", "--input", str(spec))
    assert explained.code == EXIT_FAILED and f"tessera: {spec}: not a .npz or .npy file" in explained.err


def test_predict_input_damaged_or_holding_objects_says_so(tessera_cli, tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, input=np.ones((2, 4), np.float32))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(buffer.getvalue()[:40])  # the zip's header, not its directory
    result = tessera_cli("predict", "any-model", "--input", str(cut))
    assert result.code == EXIT_FAILED and "unexpected" not in result.err, result.err
    assert result.err.startswith(f"tessera: {cut}: cannot be read as numpy arrays: "), result.err
    objects = tmp_path / "objects.npz"
    np.savez(objects, input=np.array([{"a": 1}], dtype=object))
    result = tessera_cli("predict", "any-model", "--input", str(objects))
    assert result.code == EXIT_FAILED
    assert result.err.startswith(f"tessera: {objects}: cannot be read as numpy arrays: "), result.err
