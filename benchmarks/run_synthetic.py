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
    python benchmarks/run_synthetic.py --scene shelf --profile cpu --methods full_paper \
        --workdir outputs/benchmark/shelf_cpu --resume benchmarks/results/shelf_cpu.json

``--resume`` adds (or rescores) rows in an earlier results file of the same scene, seed and profile,
training them from the reconstruction checkpoint it recorded (same workdir), so that every row
shares one reconstruction; ``--out`` defaults to that file.

The rows and the runner live in ``benchmarks/lab/``, the profiles in
``ovs3d_nerfstudio/synthetic/profiles.py``; docs/benchmarks.md explains the settings and holds
the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lab.methods import REQUIRED_ROWS, ROWS  # noqa: E402
from benchmarks.lab.runner import ResumeError, run_benchmark  # noqa: E402
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
    parser.add_argument("--resume", type=Path, default=None, help="earlier results JSON to extend (see above)")
    args = parser.parse_args()

    workdir = args.workdir or Path("outputs") / "benchmark" / f"{args.scene}_{args.profile}"
    resume = None
    if args.resume is not None:
        try:
            resume = json.loads(args.resume.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--resume {args.resume}: cannot read it as JSON ({error})")
    try:
        run_benchmark(
            args.scene, PROFILES[args.profile], args.methods, workdir, seed=args.seed, out=args.out or args.resume, resume=resume
        )
    except ResumeError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
