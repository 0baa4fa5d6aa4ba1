"""Learning curves of the synthetic benchmark: ray-resolution mIoU per trained row, one panel per scene.

    python benchmarks/plot_curves.py benchmarks/results/{fruit_lawn,desk,shelf,living_room}_cpu.json --out docs/images/learning-curves.png

Each curve is a row's ``miou_curve`` (mIoU of the rendered labels on the annotated views at
the ray resolution, every ``curve_every`` segmentation steps); the dashed lines are the two
2D baselines of the same scene at that resolution (from the diagnostics).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

ROW_STYLES = {
    "full": ("tab:red", 2.5),
    "distill_only": ("tab:blue", 2.0),
    "no_rda": ("tab:orange", 1.2),
    "no_fda": ("tab:green", 1.2),
    "no_rebalance": ("tab:purple", 1.2),
    "full_paper": ("tab:brown", 1.2),
    "full_official": ("tab:gray", 1.2),
}


def _baselines(result: Dict[str, Any]) -> Dict[str, float]:
    """The 2D teacher and RDA-target baselines at the ray resolution, from any row's diagnostics."""
    for row in result["rows"].values():
        diagnostics = row.get("diagnostics")
        if diagnostics:
            return {"teacher (2D)": diagnostics["miou"]["scale_mean"], "RDA target (2D)": diagnostics["miou"]["relevancy_mean"]}
    return {}


def plot(results: List[Dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for axis, result in zip(axes[0], results):
        for name, row in result["rows"].items():
            curve = row.get("miou_curve")
            if not curve:
                continue
            colour, width = ROW_STYLES.get(name, ("black", 1.0))
            steps, values = zip(*curve)
            axis.plot(steps, values, color=colour, linewidth=width, label=name)
        for (name, value), style in zip(_baselines(result).items(), (":", "--")):
            axis.axhline(value, color="black", linestyle=style, linewidth=1.0, label=name)
        axis.set_title(result["scene"])
        axis.set_xlabel("segmentation step")
        axis.set_ylim(0.0, 1.0)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mIoU, annotated views, ray resolution")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="benchmark JSON files (one per scene)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    plot([json.loads(path.read_text(encoding="utf-8")) for path in args.results], args.out)


if __name__ == "__main__":
    main()
