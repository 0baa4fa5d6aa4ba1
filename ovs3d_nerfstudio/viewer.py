"""The ovs3d panel of nerfstudio's viewer: legend, label editor, free query, click readout.

nerfstudio installs every ``ViewerElement`` it finds on ``nn.Module`` attributes of the
pipeline, runs their callbacks under the training lock and re-renders afterwards; this
module is such an ``nn.Module`` (without parameters, so checkpoints are unaffected).
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import TYPE_CHECKING, Callable, List

import torch
from PIL import Image
from torch import nn

from nerfstudio.viewer.viewer_elements import ViewerClick, ViewerControl, ViewerText

from ovs3d_nerfstudio.legend_image import legend_image

if TYPE_CHECKING:
    from ovs3d_nerfstudio.model import Ovs3dModel

LABEL_SEPARATOR = ";"
TRAINED_LABELS_NOTE = (
    "RDA and FDA were trained on the original label list; edited labels re-score the "
    "field's rendered CLIP features without retraining."
)


def parse_label_text(text: str) -> List[str]:
    """Labels typed in the viewer, separated by ';' (labels may contain commas)."""
    return [label.strip() for label in text.split(LABEL_SEPARATOR) if label.strip()]


def legend_markdown(labels: List[str], colours: torch.Tensor) -> str:
    """The legend as markdown holding an inline PNG (viser renders data URLs)."""
    buffer = io.BytesIO()
    Image.fromarray(legend_image(labels, colours)).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"**Labels**\n\n![legend](data:image/png;base64,{data})"


class _SetupHook(ViewerControl):
    """A ViewerControl that tells us when the viewer exists (to add markdown, click handling)."""

    def __init__(self, on_setup: Callable[[], None]):
        super().__init__()
        self._on_setup = on_setup

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        self._on_setup()


class SegmentationPanel(nn.Module):
    """GUI elements bound to a model; see the module docstring."""

    def __init__(self, model: "Ovs3dModel"):
        super().__init__()
        self._model = [model]  # a list so nn.Module does not register the model as a child
        self._legend_handle = None
        self.labels = ViewerText(
            "Labels (';' separated)", LABEL_SEPARATOR.join(f" {label}" for label in model.labels).strip(),
            cb_hook=lambda element: self.set_labels(parse_label_text(element.value)),
            hint=TRAINED_LABELS_NOTE,
        )  # fmt: skip
        self.query = ViewerText(
            "Free query", "", cb_hook=lambda element: self.set_query(element.value),
            hint="Any phrase: adds a 'query_relevancy' heat map output (against canonical negatives).",
        )  # fmt: skip
        self.clicked = ViewerText("Clicked point", "click in the scene", disabled=True)
        self.control = _SetupHook(self._on_viewer_ready)

    @property
    def _owner(self) -> "Ovs3dModel":
        # Underscored: nerfstudio's element discovery must not walk back into the model.
        return self._model[0]

    def set_labels(self, labels: List[str]) -> None:
        if labels:
            self._owner.set_display_labels(labels)
            self._update_legend()

    def set_query(self, phrase: str) -> None:
        self._owner.set_query(phrase.strip() or None)

    def _on_viewer_ready(self) -> None:
        self.control.register_pointer_cb("click", self.read_click)
        self._update_legend()

    def _update_legend(self) -> None:
        server = getattr(self.control, "viser_server", None)
        if server is None:
            return
        markdown = legend_markdown(self._owner.display_labels, self._owner.display_colours)
        with warnings.catch_warnings():  # viser warns about image roots even for data URLs
            warnings.simplefilter("ignore")
            if self._legend_handle is None:
                self._legend_handle = server.gui.add_markdown(markdown)
            else:
                self._legend_handle.content = markdown

    def read_click(self, click: ViewerClick) -> None:
        """Renders the clicked ray and reports its label and top-3 probabilities."""
        self.clicked.value = self.describe_ray(click.origin, click.direction)

    @torch.no_grad()
    def describe_ray(self, origin, direction) -> str:
        model = self._owner
        probabilities = model.class_probabilities_along_ray(
            torch.tensor(origin, dtype=torch.float32, device=model.device),
            torch.tensor(direction, dtype=torch.float32, device=model.device),
        )
        top = torch.topk(probabilities, k=min(3, probabilities.numel()))
        names = [model.display_labels[i] for i in top.indices.tolist()]
        return ", ".join(f"{name} {p:.0%}" for name, p in zip(names, top.values.tolist()))
