"""docs/configuration.md documents the defaults that ``ns-train ovs3d --help`` prints.

Runs the documentation's own checker (docs/scripts/check_configuration.py), which reads every
table row with a flag and a default and compares it with tyro's help of this checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def test_every_documented_default_matches_the_help():
    # The checker runs `ns-train` from PATH: the one installed beside this interpreter, on this checkout.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, PYTHONPATH=str(REPOSITORY))
    script = REPOSITORY / "docs" / "scripts" / "check_configuration.py"
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].endswith("documented defaults checked, 0 mismatches")
