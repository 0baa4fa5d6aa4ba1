"""One ESGS setting on a prepared workspace of ``vlg_benchmark.py`` (its ``--workdir``, after a
run): train the 3D U-Net with the given options from the workspace's adapter, then score the
held-out scenes (seed 0, masked and unmasked) and the training scenes of seed 1 (masked: how
well it fits what it was trained on). For comparing ESGS settings without rerunning stages 1-2.

    python benchmarks/vlg_esgs_probe.py --workdir outputs/vlg_benchmark/cpu --tag w2_e60 \\
        --options '{"width_divisor": 2, "epochs": 60, "lr": 0.003, "class_weight": 1.0}' --out probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.vlg_benchmark import HELD_OUT_SEED, LAYOUTS, scene_name  # noqa: E402
from ovs3d_nerfstudio.vlg.cli import Esg, EsgOptions, Predict  # noqa: E402


def probe(work: Path, tag: str, options: EsgOptions, voxel_size: float, train_seeds: int, tta: int) -> Dict:
    train = tuple(scene_name(layout, seed) for layout in LAYOUTS for seed in range(1, train_seeds + 1))
    network = work / "probes" / f"{tag}.pt"
    start = time.perf_counter()
    Esg(work=work, scenes=train, voxel_size=voxel_size, options=options, network=network).main()
    result: Dict = {"tag": tag, "options": options.__dict__, "train_seconds": time.perf_counter() - start, "scenes": {}}
    for layout in LAYOUTS:
        for seed, masks in ((HELD_OUT_SEED, (False, True)), (1, (True,))):
            name = scene_name(layout, seed)
            for masked in masks:
                key = f"{name}_{'masked' if masked else 'unmasked'}"
                metrics = Predict(
                    work=work, scene=name, tta=tta, overwrite=True, mask_scene_labels=masked, network=network,
                    output=work / "probes" / tag / key,
                ).main()
                result["scenes"][key] = {"points": metrics["points"]["esgs"]["miou"], "2d": metrics["views_2d"]["esgs"]["miou"]}
    for group in (f"s{HELD_OUT_SEED}_unmasked", f"s{HELD_OUT_SEED}_masked", "s1_masked"):
        values = [v for k, v in result["scenes"].items() if k.endswith(group)]
        result[group] = {space: float(np.mean([v[space] for v in values])) for space in ("points", "2d")}
    result["last_losses"] = torch.load(network, map_location="cpu", weights_only=False)["history"][-10:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--options", default="{}", help="EsgOptions fields as JSON (default: the CLI defaults)")
    parser.add_argument("--voxel-size", type=float, default=0.03)
    parser.add_argument("--train-seeds", type=int, default=3)
    parser.add_argument("--tta", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = EsgOptions(**json.loads(args.options))
    result = probe(args.workdir, args.tag, options, args.voxel_size, args.train_seeds, args.tta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(args.tag, {k: result[k] for k in ("s0_unmasked", "s0_masked", "s1_masked")})


if __name__ == "__main__":
    main()
