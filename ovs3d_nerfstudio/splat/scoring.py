"""Eq. 4's class cosines of full rendered images, scored in the latent space.

The CLIP head is affine, ``head(a) = A a + b``, and a rendered pixel's CLIP feature is
``F = A l + alpha b`` (``ClipHead.render``; ``l`` the rendered latent, ``alpha`` its
accumulation). Then

    F . t_c = l . (A^T t_c) + alpha (b . t_c)
    |F|^2   = l^T (A^T A) l + 2 alpha l . (A^T b) + alpha^2 |b|^2

so a whole image is scored with [L, C] and [L, L] matrices and never holds an [H, W, 512]
tensor. Same value as ``losses.segmentation_logits(ClipHead.render(l, alpha), text)``, the
norms floored at ``FEATURE_EPS`` as there.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ovs3d_nerfstudio.features.relevancy import FEATURE_EPS
from ovs3d_nerfstudio.field import ClipHead


def affine_form(head: ClipHead) -> Tuple[Float[Tensor, "D L"], Float[Tensor, "D"]]:
    """``(A, b)`` with ``head(a) = A a + b``: the head's stacked linear layers composed into one."""
    weight, bias = None, None
    for layer in head.layers:
        weight = layer.weight if weight is None else layer.weight @ weight
        bias = layer.bias if bias is None else layer.weight @ bias + layer.bias
    return weight, bias


def latent_space_logits(
    latent: Float[Tensor, "*batch L"],
    alpha: Float[Tensor, "*batch 1"],
    head: ClipHead,
    text: Float[Tensor, "C D"],
) -> Float[Tensor, "*batch C"]:
    """Cosines between each pixel's CLIP feature ``head.render(latent, alpha)`` and each class's text feature."""
    weight, bias = affine_form(head)
    unit_text = F.normalize(text, dim=-1, eps=FEATURE_EPS)
    text_in_latent = unit_text @ weight  # rows A^T t_c, [C, L]
    dot = latent @ text_in_latent.T + alpha * (unit_text @ bias)
    gram = weight.T @ weight  # [L, L]
    squared_norm = (
        ((latent @ gram) * latent).sum(-1, keepdim=True)
        + 2 * alpha * (latent @ (weight.T @ bias))[..., None]
        + alpha**2 * bias.square().sum()
    )
    return dot / squared_norm.clamp_min(0).sqrt().clamp_min(FEATURE_EPS)
