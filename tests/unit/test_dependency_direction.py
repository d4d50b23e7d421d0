"""Domain code never imports grpc (api -> domain -> store): importing the domain packages, in a
fresh interpreter, leaves grpc out of sys.modules."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemons_domain_packages_import_no_grpc() -> None:
    # tesserad.backup imports tessera.backup (the archive format): the one SDK module domain
    # code uses, which must not pull the SDK's grpc in with it.
    domain = (
        "backup",
        "backup.restore",
        "datasets",
        "registry",
        "training",
        "serving",
        "store",
        "nn",
        "log_settings",
    )
    code = f"import sys, {', '.join(f'tesserad.{name}' for name in domain)}; assert 'grpc' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
