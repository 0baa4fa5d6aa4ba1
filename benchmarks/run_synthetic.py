"""One synthetic scene, every row of the benchmark: 2D teacher baseline, full method, Table 2 ablations,
and the same method on Gaussians (``splat_full``, ``splat_distill_only``: ``ovs3d-splat``).

Writes the scene (exact masks), trains the reconstruction stage once per registered method
(``ovs3d``, ``ovs3d-splat``), trains each row's segmentation stage from it, evaluates every row
with the code ``ns-eval`` runs, prints the mIoU / accuracy table and writes everything
(per-class IoU, confusions, loss curves, timings, machine, load average, the equivalent
``ns-train`` commands) to JSON.

    python benchmarks/run_synthetic.py --scene fruit_lawn --profile cpu --out benchmarks/results/fruit_lawn_cpu.json
    python benchmarks/run_synthetic.py --scene desk --profile gpu --out benchmarks/results/desk_gpu.json
    python benchmarks/run_synthetic.py --scene shelf --profile cpu --methods baseline_2d full no_rda
    python benchmarks/run_synthetic.py --scene fruit_lawn --profile cpu --methods splat_full splat_distill_only

The rows and the runner live in ``benchmarks/lab/``, the profiles in
``ovs3d_nerfstudio/synthetic/profiles.py``; docs/benchmarks.md explains the settings and holds
the results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lab.methods import REQUIRED_ROWS, ROWS  # noqa: E402
from benchmarks.lab.runner import run_benchmark  # noqa: E402
from ovs3d_nerfstudio.synthetic.profiles import PROFILES  # noqa: E402
from ovs3d_nerfstudio.synthetic.scenes import scene_layouts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", required=True, choices=sorted(scene_layouts()), help="benchmark layout")
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES), help="settings (see docs/benchmarks.md)")
    parser.add_argument(
        "--methods", nargs="+", default=list(REQUIRED_ROWS), choices=ROWS, help="rows to run (default: the required rows)"
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seed (object jitter and textures)")
    parser.add_argument("--workdir", type=Path, default=None, help="scene, feature cache and runs (default: outputs/benchmark/<scene>_<profile>)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    args = parser.parse_args()

    workdir = args.workdir or Path("outputs") / "benchmark" / f"{args.scene}_{args.profile}"
    run_benchmark(args.scene, PROFILES[args.profile], args.methods, workdir, seed=args.seed, out=args.out)


if __name__ == "__main__":
    main()
