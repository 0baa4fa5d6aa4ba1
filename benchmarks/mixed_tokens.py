"""How much of each object lies in DINO tokens it shares with another label, per image size.

    python benchmarks/mixed_tokens.py --out benchmarks/results/mixed_tokens.json
    python benchmarks/mixed_tokens.py --sizes 1008x756 --layouts fruit_lawn --out benchmarks/results/mixed_tokens_gpu_size.json

FDA (Eqs. 9-14) pulls together the labels of rays whose DINO tokens are similar. A token whose
8x8-pixel cell holds two labels has a feature between both, so it links the two objects; an
object most of whose pixels lie in such mixed cells is pulled towards its surroundings. This
script measures, on the annotated views of every benchmark layout (seed 0, exact masks), the
fraction of each class's pixels lying in mixed cells at the CPU profile's image size and at the
GPU profile's (the paper's proportions). No teacher and no training is involved.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from ovs3d_nerfstudio.synthetic.scenes import scene_layouts, write_benchmark_scene

DINO_STRIDE = 8
PROFILE_SIZES = ("160x120", "1008x756")
"""The CPU and GPU profiles' written image sizes."""


def image_size(text: str) -> Tuple[int, int]:
    """``WxH`` -> (width, height); argparse turns the ValueError into one usage line."""
    try:
        width, height = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an image size as WIDTHxHEIGHT, e.g. 160x120") from None
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: an image must hold at least one 8x8 DINO token")
    return width, height


def mixed_fractions(segmentations: Path, stride: int = DINO_STRIDE) -> Dict[str, float]:
    """Per class: pixels in stride x stride cells that also hold another label, over the class's pixels."""
    classes = [line.strip() for line in (segmentations / "classes.txt").read_text().splitlines() if line.strip()]
    mixed_pixels = dict.fromkeys(classes, 0.0)
    pixels = dict.fromkeys(classes, 0.0)
    for view in sorted(path for path in segmentations.iterdir() if path.is_dir()):
        for label in classes:
            mask_file = view / f"{label}.png"
            if not mask_file.exists():
                continue
            mask = np.array(Image.open(mask_file).convert("L")) > 127
            height, width = mask.shape[0] // stride * stride, mask.shape[1] // stride * stride
            cells = mask[:height, :width].reshape(height // stride, stride, width // stride, stride)
            cover = cells.mean(axis=(1, 3))
            mixed = (cover > 0) & (cover < 1)
            mixed_pixels[label] += float((cells * mixed[:, None, :, None]).sum())
            pixels[label] += float(cells.sum())
    return {label: round(mixed_pixels[label] / max(pixels[label], 1.0), 3) for label in classes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--sizes", nargs="+", type=image_size, default=[image_size(size) for size in PROFILE_SIZES], help="image sizes WxH (default: both profiles')")
    parser.add_argument("--layouts", nargs="+", default=sorted(scene_layouts()), choices=sorted(scene_layouts()))
    args = parser.parse_args()
    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for width, height in args.sizes:
            for layout in args.layouts:
                scene = write_benchmark_scene(layout, Path(workdir) / f"{layout}_{width}", 0, width, height, 24)
                results[f"{layout}@{width}x{height}"] = mixed_fractions(scene / "segmentations")
                print(layout, f"{width}x{height}", results[f"{layout}@{width}x{height}"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"description": __doc__.strip().splitlines()[0], "stride": DINO_STRIDE, "fractions": results}, indent=1))


if __name__ == "__main__":
    main()
