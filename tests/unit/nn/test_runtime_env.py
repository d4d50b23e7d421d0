"""Worker malloc tunables: well-formed, and a process started with them runs Conv4d."""

from __future__ import annotations

import os
import subprocess
import sys

from tesserad.runtime_env import worker_environment


def test_tunables_are_glibc_malloc_settings() -> None:
    env = worker_environment()
    assert set(env) == {"GLIBC_TUNABLES"}
    settings = dict(item.split("=") for item in env["GLIBC_TUNABLES"].split(":"))
    assert settings
    assert all(name.startswith("glibc.malloc.") and value.isdigit() for name, value in settings.items())


def test_a_worker_started_with_them_runs_conv4d() -> None:
    code = (
        "import torch; from tesserad.nn import Conv4d;"
        "print(Conv4d(2, 3, 3, padding=1)(torch.randn(2, 2, 4, 4, 4, 4)).shape)"
    )
    env = {**os.environ, **worker_environment()}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert "torch.Size([2, 3, 4, 4, 4, 4])" in result.stdout
