"""Complete option sets: the printed paper, the official code, and this project's default.

The paper's numbers came from the official code, which computes several things differently
from the printed equations (SPEC section 6). Each difference is an individual option; one
switch, ``--pipeline.model.variant``, selects a complete set. An option given explicitly on
the command line wins over the variant. Options left unset read ``None`` in the config and
are resolved here, so a saved ``config.yml`` resolves the same way when it is reloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Literal

VariantName = Literal["paper", "official", "default"]


@dataclass(frozen=True)
class VariantOptions:
    """The options on which the paper and the official code differ."""

    rda_logits: Literal["cosine", "dot"]
    """RDA's P(r): Eq. 4's cosines (paper) or the unnormalised rendered feature's dot products (official)."""
    fda_divergence: Literal["js", "kl"]
    """FDA's Corr_D: Eq. 11's Jensen-Shannon (paper) or KL(P'_hw || P'_ij) (official)."""
    normalize_scale_targets: bool
    """Each scale's CLIP target L2-normalised before the selection mixes them (official)."""
    selection_activation: Literal["none", "sigmoid"]
    """Per-sample selection logits as they are (paper, Eq. 2) or through a sigmoid before rendering (official)."""
    clip_view_fraction: float
    """Fraction of training views given CLIP features (paper: all; official configs: 0.5)."""
    patch_rays_per_token: int
    """FDA rays rendered per token side: every pixel, averaged (8, the paper's patches) or one pooled ray (1, official)."""
    selection_training: Literal["supervision", "dino-purity"] = "supervision"
    """What trains the selection volume: Eq. 3's gradient (paper and official) or a target from DINO
    of the scale whose windows stay on the object (beyond both)."""
    rda_target: Literal["softmax", "sharpened"] = "softmax"
    """RDA's target: softmax(R_bar) (paper and official) or softmax((2 R_bar - 1) / tau) (beyond both)."""


VARIANTS: Dict[str, VariantOptions] = {
    "paper": VariantOptions(
        rda_logits="cosine",
        fda_divergence="js",
        normalize_scale_targets=False,
        selection_activation="none",
        clip_view_fraction=1.0,
        patch_rays_per_token=8,
    ),
    "official": VariantOptions(
        rda_logits="dot",
        fda_divergence="kl",
        normalize_scale_targets=True,
        selection_activation="sigmoid",
        clip_view_fraction=0.5,
        patch_rays_per_token=1,
    ),
}
VARIANTS["default"] = replace(
    VARIANTS["official"],
    fda_divergence="js",
    clip_view_fraction=1.0,
    rda_target="sharpened",
    selection_training="dino-purity",
)
"""The official code's choices, with two of the paper's (the bounded JS in FDA; CLIP features for
every view, which the compact feature store affords) and the two changes beyond both (RDA's target
sharpened with Eq. 10's tau; the selection trained on DINO purity), chosen from side-by-side runs
on the public benchmark scenes (docs/benchmarks.md). With CLIP for half the views, a floater in
front of a view without CLIP features gets no CLIP or RGB loss in segmentation and labels that
whole view with whatever its colour maps to."""

OPTION_NAMES = tuple(field.name for field in fields(VariantOptions))
BEYOND_PAPER = ("selection_training", "rda_target")
"""Options where paper and official code agree and only this project's default departs."""


def resolve_options(variant: str, **explicit: Any) -> VariantOptions:
    """The variant's options with every explicitly given (not None) one in its place."""
    unknown = set(explicit) - set(OPTION_NAMES)
    if unknown:
        raise KeyError(f"not variant options: {', '.join(sorted(unknown))}; variant options: {', '.join(OPTION_NAMES)}")
    given = {name: value for name, value in explicit.items() if value is not None}
    return replace(VARIANTS[variant], **given)
