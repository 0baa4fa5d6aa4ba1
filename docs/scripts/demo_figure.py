"""Makes the README figure from an ``ovs3d-demo`` run: RGB | label map | overlay | legend.

    python docs/scripts/demo_figure.py outputs/ovs3d-demo/<timestamp> docs/images/demo-labels.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nerfstudio.utils.eval_utils import eval_setup

from ovs3d_nerfstudio.legend_image import legend_image


def main(run: Path, output: Path, scale: int = 3) -> None:
    config = next(run.glob("runs/**/config.yml"))
    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    camera = pipeline.datamanager.eval_dataset.cameras[0:1].to(pipeline.device)
    with torch.no_grad():
        outputs = pipeline.model.get_outputs_for_camera(camera)
    panels = [outputs[key].clamp(0, 1).mul(255).byte().cpu().numpy() for key in ("rgb", "labels", "labels_overlay")]
    panels = [np.asarray(Image.fromarray(p).resize((p.shape[1] * scale, p.shape[0] * scale), Image.NEAREST)) for p in panels]
    legend = legend_image(pipeline.model.labels, pipeline.model.label_colours)
    height = max(panels[0].shape[0], legend.shape[0])
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 8), (0, 0)), constant_values=255) for p in [*panels, legend]]
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(padded, axis=1)).save(output)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
