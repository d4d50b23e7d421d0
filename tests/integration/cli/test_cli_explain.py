"""`tessera explain`: the top contributing positions, the attributions as an .npz, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.cli import EXIT_DAEMON
from tessera.errors import InvalidArgument
from tessera.inference import refusing_version
from tests.integration.serving.voxel_model import SHAPE, VOXEL, clips, push_one_voxel


def test_explain_prints_the_top_positions_and_writes_the_attributions(tessera_cli, client, tmp_path):
    push_one_voxel(client, tmp_path)
    x = clips(2)
    np.savez(tmp_path / "x.npz", input=x)
    out_file = tmp_path / "attr.npz"
    result = tessera_cli(
        "explain", "voxel", "--input", str(tmp_path / "x.npz"), "--method", "ig", "--target", "1",
        "--top", "3", "--out", str(out_file),
    )  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("voxel v1: integrated_gradients, computed in ") and lines[0].endswith(" ms")
    assert f"input[2, {', '.join(map(str, SHAPE))}] row 0, output 1, completeness error" in lines[1]
    assert lines[2].split()[:5] == [f"{VOXEL}".split()[i] for i in range(5)]
    assert float(lines[2].split()[-1]) == float(f"{2 * x[(0, *VOXEL)]:+.6g}")
    assert "row 1, output 1" in result.out and f"wrote {out_file}" in result.out
    with np.load(out_file) as saved:
        assert saved["input"].shape == x.shape
        assert np.unravel_index(np.abs(saved["input"][1]).argmax(), SHAPE) == VOXEL

    as_json = tessera_cli(
        "--json",
        "explain",
        "voxel",
        "--input",
        str(tmp_path / "x.npz"),
        "--method",
        "occlusion",
        "--top",
        "1",
    ).json()
    assert as_json["output_indices"] == [1, 1] and as_json["convergence_delta"] == []
    assert [row[0]["index"] for row in as_json["top"]["input"]] == [list(VOXEL), list(VOXEL)]


def test_explain_errors_say_what_to_fix(tessera_cli, client, tmp_path, capsys):
    push_one_voxel(client, tmp_path)
    np.save(tmp_path / "x.npy", clips(1))
    bad_target = tessera_cli("explain", "voxel", "--input", str(tmp_path / "x.npy"), "--target", "7")
    assert bad_target.code == EXIT_DAEMON
    assert "INVALID_ARGUMENT: output_index must be in 0..1" in bad_target.err
    np.savez(tmp_path / "clips.npz", x=clips(1))
    misnamed = tessera_cli("explain", "voxel", "--input", str(tmp_path / "clips.npz"))
    assert misnamed.code == EXIT_DAEMON
    assert "input 'x' is not an input of model 'voxel' version 1; its inputs are input " in misnamed.err
    # "name the array 'x' after the input it is for" read as "name the array 'x'".
    assert f"In {tmp_path / 'clips.npz'}, rename the array 'x' to the input it is for" in misnamed.err
    # Refused by the version's signature, as Predict is: the trailer names the version, so that a
    # client sends again to that version alone.
    with pytest.raises(InvalidArgument) as refused:
        client.inference.explain("voxel", {"x": clips(1)}, alias="latest")
    assert refusing_version(refused.value) == 1, refused.value.trailers
    for flags, text in (
        (("--method", "occlusion", "--window", "2,x"), "like 1,1,4,4,4"),
        (("--method", "lime"), "invalid choice: 'lime'"),
    ):
        with pytest.raises(SystemExit) as usage:
            tessera_cli("explain", "voxel", "--input", str(tmp_path / "x.npy"), *flags)
        assert usage.value.code == 2 and text in capsys.readouterr().err
