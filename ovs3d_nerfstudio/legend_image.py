"""The legend of a label map: one palette swatch and the label's text per row, as an image.

Drawn with Pillow's built-in font, so no font file is needed; used by the viewer's legend
panel, ``ovs3d-legend``, ``ovs3d-export`` and the demo's video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
from jaxtyping import Float, UInt8
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

SWATCH = 20
"""Side of a colour swatch, in pixels."""
PADDING = 6
"""Margin around the legend and between rows, in pixels."""
FONT_SIZE = 16
"""Text size, in pixels (Pillow's built-in font, so no font file is needed)."""

Colours = Union[Float[Tensor, "C 3"], Float[np.ndarray, "C 3"]]


def swatch_box(row: int) -> Tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom; right and bottom exclusive) of row ``row``'s swatch."""
    top = PADDING + row * (SWATCH + PADDING)
    return PADDING, top, PADDING + SWATCH, top + SWATCH


def colours_to_uint8(colours: Colours) -> UInt8[np.ndarray, "C 3"]:
    """Palette colours in [0, 1] (``model.display_colours``) as 0-255 bytes, rounded like image writers do."""
    values = colours.detach().cpu().numpy() if isinstance(colours, Tensor) else np.asarray(colours)
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def legend_image(labels: Sequence[str], colours: Colours) -> UInt8[np.ndarray, "H W 3"]:
    """A white image listing every label beside its swatch, in label-id order.

    Light palette colours vanish on white, so each swatch gets a one-pixel grey frame
    drawn outside :func:`swatch_box`; the box itself is exactly the palette colour.
    """
    if len(labels) == 0:
        raise ValueError("a legend needs at least one label")
    swatches = colours_to_uint8(colours)
    if swatches.shape != (len(labels), 3):
        raise ValueError(f"{len(labels)} labels need {len(labels)} RGB colours, got shape {swatches.shape}")
    font = ImageFont.load_default(size=FONT_SIZE)
    text_left = PADDING + SWATCH + PADDING
    text_width = max(int(np.ceil(font.getlength(label))) for label in labels)
    width = text_left + text_width + PADDING
    height = swatch_box(len(labels) - 1)[3] + PADDING
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for row, (label, colour) in enumerate(zip(labels, swatches, strict=True)):
        left, top, right, bottom = swatch_box(row)
        draw.rectangle((left - 1, top - 1, right, bottom), outline=(128, 128, 128))
        draw.rectangle((left, top, right - 1, bottom - 1), fill=tuple(int(c) for c in colour))
        draw.text((text_left, top + SWATCH // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(image)


def write_legend(labels: Sequence[str], colours: Colours, path: Path) -> Path:
    """Writes :func:`legend_image` as a PNG (lossless, so swatches keep their exact colours)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(legend_image(labels, colours)).save(path, format="PNG")
    return path
