"""Per-view relevancy maps of the RDA loss (Eqs. 6-7 of 3D-OVS).

For each training view, scale and class: the cosine between the text feature and every
pixel's CLIP feature, then min-max normalised over the view to [0, 1]. Normalising each
class on its own is the point of RDA (Fig. 2): a class that is only moderately similar
everywhere still gets its most relevant region at 1, so a small object is not swallowed
by a background class whose absolute CLIP score is higher.

The paper applies the selection S_I (Eq. 6) before normalising (Eq. 7). Here, as in the
official code and the SPEC, each scale is normalised on its own and the selection is
applied per ray during training (:func:`ovs3d_nerfstudio.losses.selected_relevancy`),
because a ray batch does not have the rendered selection of every pixel of the view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

FEATURE_EPS = 1e-6
"""Floor of a feature's norm when it is normalised: a zero feature gets cosine 0, not NaN."""


def class_cosines(features: Float[Tensor, "*batch D"], text: Float[Tensor, "C D"]) -> Float[Tensor, "*batch C"]:
    """``cos(T, F)`` for every feature and class, both sides normalised here (not trusted to be
    unit already): the cosine of Eq. 6 between text and pixel features, which Eq. 4's logits
    apply to rendered features (``losses.segmentation_logits``)."""
    return F.normalize(features, dim=-1, eps=FEATURE_EPS) @ F.normalize(text, dim=-1, eps=FEATURE_EPS).T


def relevancy(
    features: Float[Tensor, "*batch"],
    text: Float[Tensor, "C D"],
    feature_dim: int = -1,
) -> Float[Tensor, "*batch_with_C"]:
    """Eq. 6 without the selection: ``cos(T, F)`` per pixel (and per scale).

    ``feature_dim`` is the axis of ``features`` that holds the D channels; the output has
    the C classes on that axis. So ``[Ns, D, H, W]`` with ``feature_dim=1`` (the official
    layout) gives ``[Ns, C, H, W]``, and channel-last ``[..., D]`` gives ``[..., C]``. An
    explicit axis, because a shape alone cannot tell ``[Ns, D, H, W]`` from
    ``[Ns, H, W, D]`` when W == D. Text and pixel features are compared exactly like rendered
    ones (:func:`class_cosines`).
    """
    return class_cosines(features.movedim(feature_dim, -1), text).movedim(-1, feature_dim)


def minmax_normalize(relevancy_maps: Float[Tensor, "*batch C H W"]) -> Float[Tensor, "*batch C H W"]:
    """Eq. 7: each class's map rescaled over its spatial dims (H, W) to [0, 1].

    A constant map (max == min) carries no "where" information and becomes all zeros,
    not NaN.
    """
    flat = relevancy_maps.flatten(-2)
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    has_span = span > 0
    scaled = (flat - low) / torch.where(has_span, span, torch.ones_like(span))
    return torch.where(has_span, scaled, torch.zeros_like(scaled)).reshape(relevancy_maps.shape)


@torch.no_grad()
def normalized_relevancy_maps(
    dense_features: Float[Tensor, "Ns H W D"],
    text: Float[Tensor, "C D"],
    chunk_pixels: int = 1 << 16,
) -> Float[Tensor, "Ns C H W"]:
    """Eqs. 6-7 for one view: normalised relevancy per scale, per class, in float32.

    Takes the channel-last pixel-CLIP features of one image (any float dtype, any device)
    and works ``chunk_pixels`` pixels at a time, so the only full-size float32 tensor is
    the [Ns, C, H, W] result: the normalised copy of a full [Ns, H, W, D] feature map would
    be D / C times larger. No gradient: these are fixed targets computed once per view.
    """
    scales, height, width, dim = dense_features.shape
    flat = dense_features.reshape(scales, height * width, dim)
    text = text.to(device=dense_features.device, dtype=torch.float32)
    out = torch.empty(scales, text.shape[0], height * width, dtype=torch.float32, device=dense_features.device)
    for scale in range(scales):
        for start in range(0, height * width, chunk_pixels):
            pixels = slice(start, start + chunk_pixels)
            out[scale, :, pixels] = relevancy(flat[scale, pixels].float(), text).T
    return minmax_normalize(out.reshape(scales, -1, height, width))
