"""What a benchmark result records besides its scores (machine, code, load), and how it is written."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def _memory_gib() -> Optional[float]:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):  # sysconf names missing on this platform
        return None


def machine_description(device: str) -> Dict[str, Any]:
    """CPU model, core count, memory, torch threads, GPU name: what a timing depends on."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def write_results(results: Mapping[str, Any], out: Path) -> None:
    """Writes a benchmark's results as indented JSON, creating the folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")


def code_version() -> Dict[str, Any]:
    """Commit and locally modified files of the checkout the package runs from (None outside git):
    results are only comparable between runs of the same code."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--short"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified": None}
    modified = [line[3:] for line in status.stdout.splitlines() if line[:2].strip() and not line.startswith("??")]
    return {"commit": commit.stdout.strip(), "modified": modified}


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages (other users of the CPU make timings noisy)."""
    return [round(value, 2) for value in os.getloadavg()]


def format_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text table of mIoU and accuracy (and PSNR where trained), one line per row."""
    lines = [f"{'method':<18} {'mIoU':>7} {'accuracy':>9} {'PSNR':>7}", "-" * 44]
    for name, result in rows.items():
        psnr = result.get("psnr")
        psnr_text = f"{psnr:7.2f}" if isinstance(psnr, float) and math.isfinite(psnr) else f"{'-':>7}"
        lines.append(f"{name:<18} {result['miou']:7.4f} {result['accuracy']:9.4f} {psnr_text}")
    return "\n".join(lines)


def as_json(value: Any) -> Any:
    """Profiles and paths in JSON-friendly form."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: as_json(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
