"""``ovs3d-legend``: the legend image of a trained run, written beside its label video.

A ``labels`` video or image from ``ns-render`` is unreadable without the colour of each
label. nerfstudio's render command is not ours to extend, and the model cannot know where
ns-render writes, so ``ovs3d-legend`` writes the legend of a trained run beside the video:

    ns-render spiral --load-config RUN/config.yml --rendered-output-names labels --output-path renders/labels.mp4
    ovs3d-legend --load-config RUN/config.yml --output renders/labels-legend.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.legend_image import write_legend
from ovs3d_nerfstudio.process import run_command
from ovs3d_nerfstudio.runs import load_ovs3d_run


@dataclass
class WriteLegend:
    """Write the label legend (palette swatch + text per label) of a trained ovs3d run as a PNG."""

    load_config: Path
    """Path to the run's config.yml."""
    output: Path = Path("legend.png")
    """PNG file to write, e.g. beside the video from ns-render --rendered-output-names labels."""

    def main(self) -> None:
        model = load_ovs3d_run(self.load_config).model
        # Rendering (ns-render, ns-eval) colours the display labels, which are the trained ones here.
        path = write_legend(model.display_labels, model.display_colours, self.output)
        CONSOLE.print(f"[bold green]:white_check_mark: Legend of {len(model.display_labels)} labels written to {path}")


def entrypoint() -> None:
    """Entry point of ``ovs3d-legend``."""
    run_command(WriteLegend)


if __name__ == "__main__":
    entrypoint()
