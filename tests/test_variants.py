"""One switch selects the paper's or the official code's complete option set; explicit options win."""

import pytest

from ovs3d_nerfstudio.variants import BEYOND_PAPER, OPTION_NAMES, VARIANTS, resolve_options


def test_paper_and_official_differ_in_every_option_but_the_new_ones():
    paper, official = VARIANTS["paper"], VARIANTS["official"]
    for name in OPTION_NAMES:
        assert (getattr(paper, name) == getattr(official, name)) == (name in BEYOND_PAPER), name
    assert (official.rda_logits, official.fda_divergence, official.normalize_scale_targets) == ("dot", "kl", True)
    assert (official.selection_activation, official.clip_view_fraction, official.patch_rays_per_token) == ("sigmoid", 0.5, 1)
    assert (paper.rda_logits, paper.fda_divergence, paper.patch_rays_per_token) == ("cosine", "js", 8)


def test_default_takes_the_papers_divergence_and_views_and_the_two_changes_beyond_both():
    default, paper, official = VARIANTS["default"], VARIANTS["paper"], VARIANTS["official"]
    from_paper = {"fda_divergence", "clip_view_fraction"}
    for name in set(OPTION_NAMES) - from_paper - set(BEYOND_PAPER):
        assert getattr(default, name) == getattr(official, name), name
    for name in from_paper:
        assert getattr(default, name) == getattr(paper, name) != getattr(official, name), name
    assert (default.selection_training, default.rda_target) == ("dino-purity", "sharpened")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unset_options_follow_the_variant(variant):
    assert resolve_options(variant) == VARIANTS[variant]
    assert resolve_options(variant, rda_logits=None, clip_view_fraction=None) == VARIANTS[variant]


def test_explicit_options_win_and_unknown_names_fail():
    resolved = resolve_options("official", rda_logits="cosine", clip_view_fraction=1.0)
    assert resolved.rda_logits == "cosine" and resolved.clip_view_fraction == 1.0
    assert resolved.fda_divergence == "kl"  # the rest stays official
    with pytest.raises(KeyError, match="fda_temperature"):
        resolve_options("paper", fda_temperature=0.1)
