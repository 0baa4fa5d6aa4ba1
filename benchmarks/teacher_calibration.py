"""Statistics of the synthetic teachers, checked against documented facts about CLIP and DINO.

The synthetic teachers stand in for CLIP ViT-B/16 and DINO ViT-B/8, so the numbers the
losses see must be in the real models' range, set before any method is measured:

* CLIP: matched image-text cosines are typically 0.2-0.35 (the CLIPScore paper rescales by
  2.5 because cosines rarely exceed 0.4; LAION kept pairs above 0.28-0.3), and the cosines of
  one image with different class prompts differ by hundredths, which is why CLIP's zero-shot
  classifier multiplies them by its logit scale of 100.
* DINO: the FDA shift b = 0.7 separates tokens of one object (mostly above) from tokens of
  different objects (mostly below).

Measured on the annotated views of every benchmark layout at the CPU profile's ray resolution
(80x60): CLIP on the Alg. 1 windows that lie at least 90 % on one surface ("pure"), DINO on
pairs of pure 8x8 cells less than 8 tokens apart (the CPU profile's FDA patch).

    python benchmarks/teacher_calibration.py --out benchmarks/results/teacher_calibration.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from ovs3d_nerfstudio.data.procedural import SceneSpec, render_scene
from ovs3d_nerfstudio.features.clip_pyramid import PyramidConfig, _pyramid_windows
from ovs3d_nerfstudio.synthetic import benchmark_mask_views, scene_layouts, synthetic_clip, synthetic_dino

PURITY = 0.9
"""A window counts as showing one surface when that surface covers this fraction of it."""


def _quantiles(values: torch.Tensor) -> Dict[str, float]:
    levels = torch.tensor([0.1, 0.5, 0.9])
    return dict(zip(("q10", "median", "q90"), (round(float(v), 4) for v in torch.quantile(values.float(), levels))))


def _views(spec: SceneSpec, downscale: int, views: Sequence[int]):
    """(image [3, h, w] in [0, 1], label map [h, w]) of ``views`` box-filtered by ``downscale``."""
    scene = render_scene(spec)
    for view in views:
        image = torch.from_numpy(scene.images[view]).permute(2, 0, 1).float() / 255.0
        labels = torch.from_numpy(scene.label_maps[view])
        yield F.avg_pool2d(image[None], downscale)[0], labels[downscale // 2 :: downscale, downscale // 2 :: downscale]


@torch.no_grad()
def clip_statistics(spec: SceneSpec, downscale: int = 2, window_step: int = 1) -> Dict[str, object]:
    """Cosines of pure windows with their own label and with the best other label."""
    teacher = synthetic_clip()
    labels = spec.labels
    text = F.normalize(teacher.encode_text(labels), dim=-1)
    matched: List[torch.Tensor] = []
    best_other: List[torch.Tensor] = []
    top1 = total = 0
    for image, label_map in _views(spec, downscale, benchmark_mask_views(spec.rig.num_views)):
        height, width = label_map.shape
        for _, _, boxes in _pyramid_windows(height, width, PyramidConfig()):
            crops, owners = [], []
            for x0, y0, x1, y1 in boxes.reshape(-1, 4).tolist()[::window_step]:
                window = label_map[y0:y1, x0:x1].reshape(-1)
                counts = torch.bincount(window[window >= 0], minlength=len(labels))
                if counts.max() >= PURITY * window.numel():
                    crops.append(image[:, y0:y1, x0:x1])
                    owners.append(int(counts.argmax()))
            if not crops:
                continue
            cosines = F.normalize(teacher.encode_crops(crops), dim=-1) @ text.T
            rows = torch.arange(len(owners))
            owner = torch.tensor(owners)
            matched.append(cosines[rows, owner])
            others = cosines.clone()
            others[rows, owner] = -2.0
            best_other.append(others.amax(dim=1))
            top1 += int((cosines.argmax(dim=1) == owner).sum())
            total += len(owners)
    matched_all, other_all = torch.cat(matched), torch.cat(best_other)
    return {
        "pure_windows": total,
        "matched_cosine": _quantiles(matched_all),
        "best_other_cosine": _quantiles(other_all),
        "gap_to_best_other": _quantiles(matched_all - other_all),
        "top1_accuracy": round(top1 / max(total, 1), 4),
    }


@torch.no_grad()
def dino_statistics(spec: SceneSpec, shift: float = 0.7, reach: int = 8) -> Dict[str, object]:
    """Token cosines of nearby pure cells: same surface vs different surfaces, against ``shift``."""
    teacher = synthetic_dino()
    same: List[torch.Tensor] = []
    different: List[torch.Tensor] = []
    stride = teacher.stride
    for image, label_map in _views(spec, 1, benchmark_mask_views(spec.rig.num_views)):
        tokens = F.normalize(teacher.encode_dense(image[None])[0], dim=-1)
        rows, cols = tokens.shape[:2]
        cells = label_map.reshape(rows, stride, cols, stride).permute(0, 2, 1, 3).reshape(rows * cols, -1)
        pure = (cells == cells[:, :1]).all(dim=1)
        owner = cells[:, 0]
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        y, x = y.reshape(-1), x.reshape(-1)
        near = ((y[:, None] - y[None]).abs() < reach) & ((x[:, None] - x[None]).abs() < reach)
        pairs = pure[:, None] & pure[None] & near & ~torch.eye(len(owner), dtype=torch.bool)
        cosines = tokens.reshape(rows * cols, -1) @ tokens.reshape(rows * cols, -1).T
        same.append(cosines[pairs & (owner[:, None] == owner[None])])
        different.append(cosines[pairs & (owner[:, None] != owner[None])])
    same_all, different_all = torch.cat(same), torch.cat(different)
    return {
        "same_surface_cosine": _quantiles(same_all),
        "different_surface_cosine": _quantiles(different_all),
        "same_surface_above_shift": round(float((same_all > shift).float().mean()), 4),
        "different_surface_below_shift": round(float((different_all < shift).float().mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any directory
    from benchmarks.lab.reports import write_results

    torch.set_num_threads(1)
    teacher_identities = {"clip": synthetic_clip().identity, "dino": synthetic_dino().identity}
    results: Dict[str, object] = {"teachers": teacher_identities, "layouts": {}}
    for name, layout in scene_layouts().items():
        spec = layout(0)
        results["layouts"][name] = {"clip": clip_statistics(spec), "dino": dino_statistics(spec)}
        print(name, results["layouts"][name])
    if args.out is not None:
        write_results(results, args.out)


if __name__ == "__main__":
    main()
