"""The rows of the synthetic benchmark's table: the 2D baselines and the trained methods."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

BASELINE = "baseline_2d"
"""Name of the 2D teacher baseline row (no training)."""
BASELINE_RDA = "baseline_2d_rda"
"""Name of the 2D baseline of RDA's target: argmax of the normalised relevancy (no training)."""
BASELINES = (BASELINE, BASELINE_RDA)

METHODS: Dict[str, Mapping[str, Any]] = {
    "distill_only": {"pipeline.model.use_rda": False, "pipeline.model.use_fda": False},
    "full": {},
    "no_rda": {"pipeline.model.use_rda": False},
    "no_fda": {"pipeline.model.use_fda": False},
    "no_rebalance": {"pipeline.model.fda_rebalance": False},
    "full_paper": {"pipeline.model.variant": "paper"},
    "full_official": {"pipeline.model.variant": "official"},
    "single_scale": {"pipeline.datamanager.pyramid.patch_fractions": (0.142857,)},
    "views_10pct": {"pipeline.datamanager.clip_view_fraction": 0.1},
    "full_half_views": {"pipeline.datamanager.clip_view_fraction": 0.5},
}
"""Trained rows: the full method (default variant), distillation alone, the ablations of the
paper's Table 2, the full method as printed (``full_paper``) and as the official code computes
it (``full_official``), and the default with CLIP features for half the views as in the official
code (``full_half_views``; the default gives every view CLIP features)."""
SPLAT_METHODS: Dict[str, Mapping[str, Any]] = {
    "splat_full": {},
    "splat_distill_only": {"pipeline.model.use_rda": False, "pipeline.model.use_fda": False},
}
"""Trained rows of ``ovs3d-splat`` (the same method on Gaussians): the full method and distillation
alone. They share their own reconstruction stage, trained with the profile's splat settings."""
VARIANT_METHODS: Dict[str, Mapping[str, Mapping[str, Any]]] = {"ovs3d": METHODS, "ovs3d-splat": SPLAT_METHODS}
"""Registered method -> its trained rows and their overrides."""
REQUIRED_ROWS: Tuple[str, ...] = (*BASELINES, "distill_only", "full", "no_rda", "no_fda", "no_rebalance")
"""The rows the CPU profile's one-hour budget per scene is sized for."""

ROWS: Tuple[str, ...] = (*BASELINES, *METHODS, *SPLAT_METHODS)
"""Every row of the results table, in print order."""


def registered_method(row: str) -> str:
    """The registered method (``ovs3d`` or ``ovs3d-splat``) that trains ``row``."""
    for method, table in VARIANT_METHODS.items():
        if row in table:
            return method
    raise ValueError(f"'{row}' is not a trained row; trained rows: {[name for table in VARIANT_METHODS.values() for name in table]}")
