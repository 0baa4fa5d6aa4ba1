"""DINO tokens for FDA patches: cached per view and cropped, or encoded per patch every step.

Measures both with the real DINO v1 ViT-B/8 architecture (random weights: speed does not
depend on weight values) side by side in one run, and prints per-step cost, one-time
cost, cache size and the step count after which caching is cheaper. Results go to JSON.

    python benchmarks/dino_tokens.py --device cpu --out dino_tokens.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.perf_report import finish_report, run_context  # noqa: E402
from ovs3d_nerfstudio.teachers.config import DinoTeacherConfig  # noqa: E402


def timed(function, repeats: int, device: str) -> float:
    """Median wall time of ``function`` after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patches", type=int, default=8, help="patches per step (paper: 8)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per patch side (paper: 32)")
    parser.add_argument("--view-height", type=int, default=604, help="patch-resolution view (3024 / 5)")
    parser.add_argument("--view-width", type=int, default=806, help="patch-resolution view (4032 / 5)")
    parser.add_argument("--views", type=int, default=25, help="views per scene (3D-OVS: 20-30)")
    parser.add_argument("--steps", type=int, default=15000, help="segmentation steps (paper: 15k)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    teacher = DinoTeacherConfig(pretrained="random").setup(device=args.device)
    stride = teacher.stride
    patch = args.tokens * stride
    height, width = args.view_height // stride * stride, args.view_width // stride * stride
    patches = torch.rand(args.patches, 3, patch, patch, device=args.device)
    view = torch.rand(1, 3, height, width, device=args.device)

    with torch.no_grad():
        on_the_fly_step = timed(lambda: teacher.encode_dense(patches), args.repeats, args.device)
        encode_view = timed(lambda: teacher.encode_dense(view), args.repeats, args.device)
        cache = teacher.encode_dense(view).half()
        rows = torch.randint(0, height // stride - args.tokens + 1, (args.patches,), device=args.device)
        cols = torch.randint(0, width // stride - args.tokens + 1, (args.patches,), device=args.device)
        span = torch.arange(args.tokens, device=args.device)

        def crop():
            return cache[0][(rows[:, None] + span)[:, :, None], (cols[:, None] + span)[:, None, :]].float()

        cached_step = timed(crop, args.repeats, args.device)

    cache_bytes = args.views * (height // stride) * (width // stride) * teacher.feature_dim * 2
    one_time = encode_view * args.views
    per_step_saving = on_the_fly_step - cached_step
    results = {
        **run_context(args.device),
        "model": "DINO v1 ViT-B/8 (random weights)",
        "patches_per_step": args.patches,
        "patch_pixels": patch,
        "view_pixels": [width, height],
        "views": args.views,
        "on_the_fly_seconds_per_step": on_the_fly_step,
        "cached_seconds_per_step": cached_step,
        "cached_one_time_seconds": one_time,
        "cache_bytes_fp16": cache_bytes,
        "break_even_steps": one_time / per_step_saving if per_step_saving > 0 else None,
        "total_seconds_over_steps": {
            "on_the_fly": on_the_fly_step * args.steps,
            "cached": one_time + cached_step * args.steps,
        },
        "note": "Cached tokens see the whole view (global attention) while per-patch tokens see only the crop, "
        "so the two are not numerically identical; both mark the same object boundaries.",
    }
    finish_report(results, args.out)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
