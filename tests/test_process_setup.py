"""Importing the package changes nothing in the process; our commands set up what they need.

nerfstudio imports every plugin for every ``ns-*`` command, so an import-time change would
reach ``ns-train nerfacto`` too. (One-line errors from ``ns-train ovs3d``, set up by the
pipeline, are tested in test_config_checks.py and test_train_end_to_end.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovs3d_nerfstudio import camera_paths, demo, errors, export, legend

REPOSITORY = Path(__file__).resolve().parents[1]

IMPORT_EVERYTHING = """
import json, os, pkgutil, sys, importlib
import torch

def state():
    return {"excepthook": repr(sys.excepthook), "path": os.environ["PATH"]}

def safe_globals():
    return set(map(repr, torch.serialization.get_safe_globals()))

before = state()
import ovs3d_nerfstudio
for module in pkgutil.walk_packages(ovs3d_nerfstudio.__path__, "ovs3d_nerfstudio."):
    importlib.import_module(module.name)
# What every ns-* command does first: load the method and dataparser entry points of all plugins.
from nerfstudio.plugins.registry import discover_methods
from nerfstudio.plugins.registry_dataparser import discover_dataparsers
methods, _ = discover_methods()
dataparsers, _ = discover_dataparsers()
assert "ovs3d" in methods and "ovs3d-data" in dataparsers
after = state()
# torch allow-lists some of its own classes when its modules load; ours are still to be added.
imported = safe_globals()
from ovs3d_nerfstudio.checkpoints import register_checkpoint_globals
register_checkpoint_globals()
print(json.dumps({"before": before, "after": after, "ours_added_later": sorted(safe_globals() - imported)}))
"""


def run_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY), CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, *args, *(["-c", code] if code else [])]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_importing_every_module_and_the_plugin_entry_points_changes_nothing(tmp_path: Path):
    result = run_python(IMPORT_EVERYTHING, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    states = json.loads(result.stdout.strip().splitlines()[-1])
    assert states["after"]["excepthook"] == states["before"]["excepthook"]
    assert states["after"]["path"] == states["before"]["path"]
    assert any("numpy" in name for name in states["ours_added_later"])  # not allow-listed at import


def test_a_command_prints_our_errors_as_one_line(tmp_path: Path):
    """End to end through a real process: ``ovs3d-legend`` (``python -m``, as its console script runs it)."""
    result = run_python("", "-m", "ovs3d_nerfstudio.legend", "--load-config", str(tmp_path / "none.yml"), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"ovs3d: error: {tmp_path / 'none.yml'} is not a file: pass the config.yml of a trained ovs3d run "
        "(outputs/<experiment>/ovs3d/<timestamp>/config.yml)."
    )


@pytest.mark.parametrize(
    "name, module, args",
    [
        ("ovs3d-legend", legend, ["--load-config", "missing.yml"]),
        ("ovs3d-export", export, ["--load-config", "missing.yml", "--output-dir", "export"]),
        ("ovs3d-camera-path", camera_paths, ["--load-config", "missing.yml"]),
        ("ovs3d-demo", demo, ["--scene", "no_such_scene"]),
    ],
)
def test_each_entry_point_sets_up_the_process_before_its_first_error(name, module, args, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setenv("PATH", os.environ["PATH"])  # restored afterwards: the entry point may extend it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [name, *args])
    with pytest.raises(errors.UserFacingError):
        module.entrypoint()
    assert sys.excepthook is errors.print_user_errors


def test_the_excepthook_prints_user_errors_alone_and_passes_the_rest_on(capsys):
    seen = []

    def fallback(exc_type, exc, traceback):
        seen.append(exc_type)

    errors.print_user_errors(errors.ConfigError, errors.ConfigError("--x 0: must be >= 1"), None, fallback)
    errors.print_user_errors(KeyError, KeyError("k"), None, fallback)
    assert capsys.readouterr().err == "ovs3d: error: --x 0: must be >= 1\n"
    assert seen == [KeyError]
