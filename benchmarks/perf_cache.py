"""Pixel CLIP feature storage: our Alg. 1 window store against the official dense layout.

The official code saves, per training image, the dense multi-scale features as one fp32 tensor
[3, 512, H/8, W/8] (``.pth``). We store Alg. 1's windows instead (int32 boxes + fp16 crop
embeddings), from which every pixel feature is rebuilt exactly. Two measurements:

* **3D-OVS image size, computed exactly.** 4032x3024 photos, features at 1/8 (504x378),
  D = 512: tensor bytes of both layouts from the window geometry of the default pyramid.
* **Synthetic scenes, measured on disk.** Every view of each layout, downscaled like the
  datamanager does, goes through ``extract_pyramid`` with the synthetic teacher (D = 64) into a
  fresh ``FeatureCache`` (the real cache files); the official layout is measured by saving one
  view's dense [3, D, H, W] fp32 tensor with ``torch.save`` (all views have the same size).

    python benchmarks/perf_cache.py --out benchmarks/results/feature_cache.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.perf_report import finish_report, run_context  # noqa: E402
from ovs3d_nerfstudio.data.datamanager import load_downscaled_images  # noqa: E402
from ovs3d_nerfstudio.features.cache import FeatureCache  # noqa: E402
from ovs3d_nerfstudio.features.clip_pyramid import PyramidConfig, extract_pyramid, patch_geometry, window_boxes  # noqa: E402
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene  # noqa: E402
from ovs3d_nerfstudio.synthetic.teachers import synthetic_clip  # noqa: E402

BOX_BYTES = 4 * 4
"""One window box: four int32 coordinates."""
EMBEDDING_BYTES = 2
"""One embedding value: fp16."""


def window_counts(height: int, width: int, config: PyramidConfig) -> List[int]:
    """Windows per scale of Alg. 1 (with the edge windows ``window_boxes`` adds)."""
    generator = torch.Generator().manual_seed(config.seed)
    counts = []
    for fraction in config.patch_fractions:
        patch_size, stride = patch_geometry(height, width, fraction)
        boxes = window_boxes(height, width, patch_size, stride, generator)
        counts.append(boxes.shape[0] * boxes.shape[1])
    return counts


def exact_sizes(height: int, width: int, dim: int, views: int, config: PyramidConfig) -> Dict[str, Any]:
    """Tensor bytes per image and per scene: window store vs dense fp32 (official) and dense fp16."""
    counts = window_counts(height, width, config)
    store = sum(counts) * (BOX_BYTES + dim * EMBEDDING_BYTES)
    dense_fp32 = len(config.patch_fractions) * dim * height * width * 4
    return {
        "feature_size": [width, height],
        "embed_dim": dim,
        "windows_per_scale": counts,
        "store_bytes_per_image": store,
        "official_fp32_bytes_per_image": dense_fp32,
        "dense_fp16_bytes_per_image": dense_fp32 // 2,
        "views": views,
        "store_bytes_per_scene": store * views,
        "official_fp32_bytes_per_scene": dense_fp32 * views,
        "ratio_official_over_store": dense_fp32 / store,
    }


def measured_on_disk(scene: str, written: Tuple[int, int], downscale: int, workdir: Path) -> Dict[str, Any]:
    """Writes the layout, extracts every view into a fresh cache, and sums the files' sizes."""
    root = write_benchmark_scene(scene, workdir / scene, seed=0, width=written[0], height=written[1])
    images = load_downscaled_images(sorted((root / "images").iterdir()), downscale)
    teacher = synthetic_clip()
    config = PyramidConfig()
    cache = FeatureCache(workdir / f"cache_{scene}_{written[0]}x{written[1]}")
    dense_view = None
    for view, image in enumerate(images):
        pixels = image.permute(2, 0, 1).float() / 255.0
        pyramid = extract_pyramid(pixels, teacher, config, batch_size=256)
        key = cache.key(image, teacher.identity, {"pyramid": list(config.patch_fractions), "seed": config.seed})
        cache.save(key, pyramid.to_tensors())
        if view == 0:
            dense_view = torch.stack([pyramid.dense(s).permute(2, 0, 1) for s in range(pyramid.num_scales)])
    store_bytes = sum(path.stat().st_size for path in cache.root.rglob("*.pt"))
    official_file = workdir / f"official_{scene}_view0.pth"
    torch.save(dense_view.contiguous(), official_file)
    official_bytes = official_file.stat().st_size * len(images)
    official_file.unlink()
    height, width = images.shape[1:3]
    return {
        "scene": scene,
        "written_size": list(written),
        "feature_size": [width, height],
        "embed_dim": teacher.embed_dim,
        "views": len(images),
        "store_bytes_on_disk": store_bytes,
        "official_fp32_bytes_on_disk": official_bytes,
        "ratio_official_over_store": official_bytes / store_bytes,
        "exact_tensor_bytes": exact_sizes(height, width, teacher.embed_dim, len(images), config),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=25, help="images per 3D-OVS scene for the exact figure (20-30)")
    parser.add_argument("--scenes", nargs="+", default=["fruit_lawn", "desk", "shelf"])
    parser.add_argument("--large-scene", default="fruit_lawn", help="also measured at the GPU profile's size")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    config = PyramidConfig()
    results: Dict[str, Any] = {
        **run_context("cpu"),
        "pyramid": {"patch_fractions": list(config.patch_fractions), "seed": config.seed},
        "3d_ovs_exact": exact_sizes(3024 // 8, 4032 // 8, 512, args.views, config),
        "synthetic_on_disk": [],
    }
    exact = results["3d_ovs_exact"]
    print(
        f"3D-OVS 504x378, D=512: store {exact['store_bytes_per_image'] / 2**20:.2f} MiB/image, official fp32 "
        f"{exact['official_fp32_bytes_per_image'] / 2**20:.0f} MiB/image; per {args.views}-view scene "
        f"{exact['store_bytes_per_scene'] / 2**20:.0f} MiB vs {exact['official_fp32_bytes_per_scene'] / 2**30:.1f} GiB "
        f"(x{exact['ratio_official_over_store']:.0f})",
        flush=True,
    )
    # (written size, downscale): the CPU profile's 160x120 at 1/2, the GPU profile's 1008x756 at 1/2.
    jobs = [(scene, (160, 120), 2) for scene in args.scenes] + [(args.large_scene, (1008, 756), 2)]
    with tempfile.TemporaryDirectory() as tmp:
        for scene, written, downscale in jobs:
            row = measured_on_disk(scene, written, downscale, Path(tmp))
            results["synthetic_on_disk"].append(row)
            print(
                f"{scene} {row['feature_size'][0]}x{row['feature_size'][1]} x{row['views']} views, D={row['embed_dim']}: "
                f"store {row['store_bytes_on_disk'] / 2**20:.2f} MiB on disk, official fp32 "
                f"{row['official_fp32_bytes_on_disk'] / 2**20:.1f} MiB (x{row['ratio_official_over_store']:.1f})",
                flush=True,
            )
    finish_report(results, args.out)


if __name__ == "__main__":
    main()
