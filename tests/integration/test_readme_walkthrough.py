"""The README's "Walk through the life cycle", run as written: each of its shell blocks, top to
bottom, by bash in a fresh directory, with `tessera` on the PATH and TESSERA_TARGET pointing at a
real `tesserad serve`. The blocks are read from README.md, so the test runs whatever it says.
Its Triton block runs Triton's own client from `.venv-triton` in that directory: the venv the
tritonclient conformance test uses (TESSERA_TRITONCLIENT_PYTHON, else the checkout's own). Without
one, every other block runs and is checked, and the test then skips, saying why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.readme_blocks import code_blocks

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SECTION = "Walk through the life cycle"
CLIENT_README = REPO / "clients" / "python" / "README.md"
CLIENT_SECTION = "The walkthrough: `tessera demo`"
SHELLS = {"sh", "bash", "shell"}
# bash traces each command it runs with this prefix (PS4), which splits the transcript into steps.
STEP_MARK = "+walkthrough$ "
TRITON_VENV = ".venv-triton"


@dataclass
class Step:
    command: str
    output: str


def run_block(block: str, cwd: Path, env: dict[str, str]) -> tuple[int, list[Step]]:
    """Run one block as a user would paste it, stopping at the first failing command; return
    bash's exit status and each traced command with what it printed (stdout and stderr)."""
    # PS4 is set in the script: bash run as root ignores it in the environment.
    script = f"PS4='{STEP_MARK}'\nset -x\n{block}"
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
    )
    steps: list[Step] = []
    for line in done.stdout.splitlines(keepends=True):
        if line.startswith(STEP_MARK):
            steps.append(Step(line.removeprefix(STEP_MARK).strip(), ""))
        elif steps:
            steps[-1].output += line
    return done.returncode, steps


def tritonclient_venv() -> Path | None:
    """The venv holding tritonclient, as tests/integration/serving/test_serving_tritonclient.py
    finds its python; None when there is none."""
    named = os.environ.get("TESSERA_TRITONCLIENT_PYTHON")
    python = Path(named) if named else REPO / TRITON_VENV / "bin" / "python"
    return python.parents[1] if python.exists() else None


def transcript(steps: list[Step]) -> str:
    return "".join(f"$ {step.command}\n{step.output}" for step in steps)


def output_of(steps: list[Step], command: str, nth: int = 0) -> str:
    """What the walkthrough's `nth` run of `command` (a prefix of the traced command line) printed."""
    found = [step.output for step in steps if step.command.startswith(command)]
    assert len(found) > nth, (
        f"the README walkthrough no longer runs {command!r}; it ran:\n{transcript(steps)}"
    )
    return found[nth]


def test_shell_blocks_are_read_from_the_section_only() -> None:
    markdown = (
        "# t\n\n## Walk\n\n```sh\none\n```\n\n```python\nskipped\n```\n\n"
        "### deeper\n\n```bash\ntwo\n# not a heading\n```\n\n## Next\n\n```sh\nthree\n```\n"
    )
    assert code_blocks(markdown, "Walk", SHELLS) == ["one\n", "two\n# not a heading\n"]
    assert code_blocks(markdown, "Missing", SHELLS) == []


@pytest.mark.slow
def test_readme_walkthrough_runs_top_to_bottom(spawn_daemon, tmp_path: Path) -> None:
    blocks = code_blocks(README.read_text(encoding="utf-8"), SECTION, SHELLS)
    assert blocks, f"README.md has no shell blocks under {SECTION!r}"
    # As `make run` starts it: the data directory relative to the daemon's working directory.
    daemon_cwd = tmp_path / "daemon"
    daemon_cwd.mkdir()
    # Commits left to the OS to write, as every in-process test daemon's are (tests/conftest.py's
    # daemon_settings): the README's commands and what they print are the same; an fsync a commit
    # is not, on a busy machine.
    daemon = spawn_daemon(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--data-dir",
        "./var",
        cwd=daemon_cwd,
        env={"TESSERA_STORE_DURABILITY": "relaxed"},
    )
    target = daemon.wait_serving()
    workdir = tmp_path / "walkthrough"
    workdir.mkdir()
    # The README activates the venv; its bin holds `tessera` and the `python` with numpy.
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TESSERA_TARGET": target}
    triton = tritonclient_venv()
    if triton is not None:
        (workdir / TRITON_VENV).symlink_to(triton, target_is_directory=True)

    steps: list[Step] = []
    for block in blocks:
        if triton is None and f"{TRITON_VENV}/" in block:
            continue
        code, ran = run_block(block, workdir, env)
        steps += ran
        assert code == 0, (
            f"README step `{ran[-1].command if ran else block}` exited {code}; "
            f"the walkthrough so far:\n{transcript(steps)}"
        )

    assert (daemon_cwd / "var" / "store").is_dir(), "the daemon did not keep its data in ./var"
    assert "7/7" in output_of(steps, "tessera demo")
    assert {"clips.npz", "batch.npz", "spec.toml"} <= {p.name for p in workdir.iterdir()}
    assert "stored clips:1" in output_of(steps, "tessera datasets push clips")
    trained = output_of(steps, "tessera train spec.toml")
    assert "succeeded" in trained and "clips-cnn4d v1" in trained
    versions = output_of(steps, "tessera models versions clips-cnn4d")
    assert re.search(r"^\W*1\W.*safetensors.*staging", versions, re.MULTILINE), versions
    assert "exported clips-cnn4d v2" in output_of(steps, "tessera export onnx clips-cnn4d")
    predicted = output_of(steps, "tessera predict clips-cnn4d")
    assert "clips-cnn4d v2" in predicted and "output float32[" in predicted, predicted
    stats = output_of(steps, "tessera stats clips-cnn4d")
    assert all(p in stats for p in ("p50", "p95", "p99", "p99.9", "clips-cnn4d v2")), stats
    deployed = output_of(steps, "tessera models deploy clips-cnn4d")
    assert re.search(r"v2\W+90%", deployed) and re.search(r"v1\W+10%", deployed), deployed
    rolled_back = output_of(steps, "tessera models rollback clips-cnn4d")
    assert "clips-cnn4d: no deployment" in rolled_back, rolled_back  # as before the deploy
    # The SDK (the second `python -` block: the first makes the data) and Triton's client.
    by_sdk = output_of(steps, "python -", nth=1)
    assert re.fullmatch(r"v2 \[[01] [01] [01] [01]\]\n", by_sdk), by_sdk
    if triton is not None:
        assert output_of(steps, f"{TRITON_VENV}/bin/python -") == by_sdk
    kept = output_of(steps, "tessera load clips-cnn4d --version 2 --keep-config")
    assert re.search(r"clips-cnn4d\W+2\W+ready\W+onnx\W+cpu\W+2\W+32\W", kept), kept
    assert "unloaded clips-cnn4d v2" in output_of(steps, "tessera unload clips-cnn4d")
    fine_tuned = output_of(steps, "tessera train finetune.toml")
    assert "succeeded" in fine_tuned and "clips-finetuned v1" in fine_tuned, fine_tuned
    shown = output_of(steps, "tessera models show clips-finetuned")
    assert re.search(r"parent\W+clips-cnn4d v1", shown), shown
    runs = output_of(steps, "tessera runs ls --experiment clips")
    assert runs.count("succeeded") == 2, runs
    board = output_of(steps, "tessera runs leaderboard clips val_loss")
    assert "clips by val_loss" in board and re.search(r"left out: \d+ params", board), board
    assert "registered clips-ensemble v1: mean of" in output_of(steps, "tessera models ensemble")
    assert "clips-ensemble v1" in output_of(steps, "tessera predict clips-ensemble")
    ensemble_stats = output_of(steps, "tessera stats clips-ensemble")
    assert all(v in ensemble_stats for v in ("clips-ensemble v1", "clips-cnn4d v1", "clips-cnn4d v2"))
    explained = output_of(steps, "tessera explain clips-cnn4d")
    assert "clips-cnn4d v2, explained through torch v1" in explained, explained
    assert "input[4, 1, 4, 4, 4, 4] row 3, output" in explained and (workdir / "attr.npz").exists(), explained
    # The client README's commands by hand, as a reader who walked the above runs them: not again
    # those the walkthrough ran (the push, the training). Its export named no version and failed
    # FAILED_PRECONDITION: the latest version was the ONNX export above.
    by_hand = [
        b
        for b in code_blocks(CLIENT_README.read_text(encoding="utf-8"), CLIENT_SECTION, SHELLS)
        if "tessera export onnx" in b
    ]
    assert len(by_hand) == 1, f"{CLIENT_README} has no block of commands by hand under {CLIENT_SECTION!r}"
    ran_already = {step.command for step in steps}
    rest = "".join(
        line
        for line in by_hand[0].splitlines(keepends=True)
        if line.partition("#")[0].strip() not in ran_already
    )
    code, ran = run_block(rest, workdir, env)
    assert code == 0, f"client README step `{ran[-1].command}` exited {code}:\n{transcript(ran)}"
    assert "clips-cnn4d v2" in output_of(
        ran, "tessera predict clips-cnn4d --input batch.npz --alias production"
    )
    if triton is None:
        pytest.skip(
            "every README step ran but Triton's, which needs tritonclient: set "
            "TESSERA_TRITONCLIENT_PYTHON to a python with 'tritonclient[grpc]' (or make "
            f"{TRITON_VENV}/.installed in the repository root)"
        )
