"""Alg. 1 pixel CLIP features: batched ``extract_pyramid`` against the literal ``extract_pyramid_sequential``.

Both run in this process, one after the other, on the same image with the same windows (same
``PyramidConfig`` seed) and the same encoder, for two encoders:

* the real open_clip ViT-B-16 architecture with random weights (``ClipTeacherConfig(
  pretrained="random")``): speed does not depend on weight values;
* the synthetic CLIP teacher of the benchmark.

Reported per encoder: wall time of each path, the speed ratio, and the largest absolute
difference between the two dense outputs [N_s, D, H, W] (the batched path stores crop
embeddings in fp16, so the difference is bounded by fp16 rounding of the embeddings).

Every crop is resized to 224x224 by CLIP's preprocessing, so the ViT's cost per crop does not
depend on the image size, only on the number of windows (about 16 / fraction^2 per scale
once the stride exceeds one pixel); on a CPU the ViT therefore runs on a small image by
default to keep the sequential path to minutes. The per-crop ratio is what transfers.

    python benchmarks/perf_clip_extraction.py --out benchmarks/results/clip_extraction_cpu.json
    python benchmarks/perf_clip_extraction.py --device cuda --vit-size 504 378 --out benchmarks/results/clip_extraction_gpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lab.reports import load_average  # noqa: E402
from benchmarks.perf_report import finish_report, run_context  # noqa: E402
from ovs3d_nerfstudio.data.procedural import render_scene  # noqa: E402
from ovs3d_nerfstudio.features.clip_pyramid import PyramidConfig, extract_pyramid, extract_pyramid_sequential  # noqa: E402
from ovs3d_nerfstudio.synthetic.scenes import scene_layouts  # noqa: E402
from ovs3d_nerfstudio.synthetic.teachers import synthetic_clip  # noqa: E402
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig  # noqa: E402


def scene_image(width: int, height: int) -> torch.Tensor:
    """View 0 of the ``fruit_lawn`` layout rendered at ``width`` x ``height``, [3, H, W] in [0, 1]."""
    spec = scene_layouts()["fruit_lawn"](0, width=width, height=height, num_views=1)
    return torch.from_numpy(render_scene(spec).images[0]).permute(2, 0, 1).float() / 255.0


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(teacher, image: torch.Tensor, config: PyramidConfig, batch_size: int, device: str) -> Dict[str, Any]:
    """Times both paths once each (after a small warm-up) and compares their dense outputs."""
    image = image.to(device)
    teacher.encode_crops([image[:, :8, :8]] * 2)  # warm-up: lazy initialisation, allocator
    synchronize(device)
    start = time.perf_counter()
    pyramid = extract_pyramid(image, teacher, config, batch_size=batch_size)
    synchronize(device)
    batched_seconds = time.perf_counter() - start
    load_between = load_average()
    start = time.perf_counter()
    reference = extract_pyramid_sequential(image, teacher, config)
    synchronize(device)
    sequential_seconds = time.perf_counter() - start
    dense = torch.stack([pyramid.dense(s).permute(2, 0, 1).cpu() for s in range(pyramid.num_scales)])
    windows = sum(boxes.shape[0] * boxes.shape[1] for boxes in pyramid.boxes)
    return {
        "image_size": [image.shape[2], image.shape[1]],
        "windows": windows,
        "batch_size": batch_size,
        "batched_seconds": batched_seconds,
        "sequential_seconds": sequential_seconds,
        "speedup": sequential_seconds / batched_seconds,
        "batched_crops_per_second": windows / batched_seconds,
        "sequential_crops_per_second": windows / sequential_seconds,
        "max_abs_difference": float((dense - reference).abs().max()),
        "max_abs_value": float(reference.abs().max()),
        "load_average_between": load_between,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vit-size", type=int, nargs=2, default=(32, 24), metavar=("W", "H"), help="image for ViT-B-16")
    parser.add_argument("--synthetic-size", type=int, nargs=2, default=(80, 60), metavar=("W", "H"), help="image for the synthetic teacher (CPU profile's ray resolution)")
    parser.add_argument("--vit-batch-size", type=int, default=64, help="crops per ViT call (ClipTeacherConfig default)")
    parser.add_argument("--synthetic-batch-size", type=int, default=256, help="crops per synthetic-teacher call (benchmark profiles)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    config = PyramidConfig()
    results: Dict[str, Any] = {
        **run_context(args.device),
        "pyramid": {"patch_fractions": list(config.patch_fractions), "seed": config.seed},
    }
    encoders: Dict[str, Tuple[Any, Tuple[int, int], int]] = {
        "open_clip ViT-B-16 (random weights)": (
            ClipTeacherConfig(pretrained="random", batch_size=args.vit_batch_size).setup(device=args.device),
            tuple(args.vit_size),
            args.vit_batch_size,
        ),
        "synthetic CLIP": (synthetic_clip(), tuple(args.synthetic_size), args.synthetic_batch_size),
    }
    for name, (teacher, (width, height), batch_size) in encoders.items():
        print(f"{name}: {width}x{height} image ...", flush=True)
        results[name] = compare(teacher, scene_image(width, height), config, batch_size, args.device)
        row = results[name]
        print(
            f"  {row['windows']} windows: batched {row['batched_seconds']:.2f} s, sequential "
            f"{row['sequential_seconds']:.2f} s, speed-up x{row['speedup']:.2f}, max |diff| "
            f"{row['max_abs_difference']:.2e} (max |value| {row['max_abs_value']:.2f})",
            flush=True,
        )
    finish_report(results, args.out)


if __name__ == "__main__":
    main()
