"""What every perf script records beside its measurements, and how it writes them.

A timing depends on the machine and on what else runs on it, so each result file holds the
machine and the load averages at the start and at the end, next to the script's own fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from benchmarks.lab.reports import load_average, machine_description, write_results


def run_context(device: str) -> Dict[str, Any]:
    """What every report starts with: the machine and the load average now."""
    return {"machine": machine_description(device), "load_average_start": load_average()}


def finish_report(report: Dict[str, Any], out: Optional[Path]) -> None:
    """Adds the load average now and writes the report as JSON to ``out`` (when given)."""
    report["load_average_end"] = load_average()
    if out is not None:
        write_results(report, Path(out))
        print(f"wrote {out}")
