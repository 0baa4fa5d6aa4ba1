"""The training losses of 3D-OVS (Liu et al., NeurIPS 2023, Sec. 3), one pure function each.

Total loss = supervision (Eq. 3) + RDA (Eqs. 5-8) + FDA (Eqs. 9-14). Every function here
is stateless torch: the model decides what to feed in and how to weight the results.

Where the paper, the project SPEC and the official code differ, the paper is followed and
the difference is noted at the function concerned:

* Eq. 3 and Eq. 8 sum over the rays of a batch; here they are averaged (as the official
  code does), so the official weights hold for any batch size.
* Eq. 4 is a cosine; the official code feeds the RDA loss an *unnormalised* dot product
  between the rendered feature and the text features. Here every logit is the cosine.
* Eq. 11 is a true pairwise Jensen-Shannon divergence. The official ``js_correlation``
  builds the mixture M from the same position of its two (identical) inputs before
  pairing, so it computes KL(P'_hw || P'_ij) instead. Here it is the JS of Eq. 11.
* Eqs. 6-7 normalise the *selected* relevancy over the image; the official code and the
  SPEC normalise per scale first and select per ray afterwards, which is what
  :func:`selected_relevancy` does (see its docstring for why).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor
from torch.autograd.function import once_differentiable

from ovs3d_nerfstudio.features.relevancy import FEATURE_EPS, class_cosines

_LOG2 = math.log(2.0)


def _tiny(x: Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def selected_targets(
    targets: Float[Tensor, "*batch Ns D"],
    selection: Float[Tensor, "*batch Ns"],
    normalize_scales: bool = False,
) -> Float[Tensor, "*batch D"]:
    """``S(r) F(r) = sum_s S_s(r) F_s(r)`` of Eq. 3: the ray's N_s pixel-CLIP features mixed by the selection.

    ``normalize_scales`` L2-normalises each scale's feature before mixing, as the official code
    does when it loads the features; the paper mixes them as they are.
    """
    if normalize_scales:
        targets = F.normalize(targets, dim=-1, eps=FEATURE_EPS)
    return (selection[..., None] * targets).sum(dim=-2)


def clip_supervision_loss(
    rendered: Float[Tensor, "R D"],
    targets: Float[Tensor, "R Ns D"],
    selection: Float[Tensor, "R Ns"],
    valid: Optional[Bool[Tensor, "R"]] = None,
    normalize_scales: bool = False,
) -> Float[Tensor, ""]:
    """Feature half of Eq. 3: ``mean_r -cos(F^(r), S(r) F(r))``.

    ``S(r) F(r)`` is :func:`selected_targets`, so the gradient also teaches the selection
    volume which scale fits the object. The official code normalises the mixed feature before
    the cosine; the cosine is scale invariant, so that is the same loss, done here by
    normalising both sides with an eps that keeps zero vectors finite.

    Averaged over the (valid) rays instead of the paper's sum, so the weight does not
    depend on the batch size. The RGB half of Eq. 3 is nerfstudio's MSE in the model.
    ``valid`` drops rays without a target; with no valid ray the loss is 0.
    """
    selected = selected_targets(targets, selection, normalize_scales)
    cos = (F.normalize(rendered, dim=-1, eps=FEATURE_EPS) * F.normalize(selected, dim=-1, eps=FEATURE_EPS)).sum(-1)
    return -_valid_mean(cos, valid)


def _valid_mean(values: Float[Tensor, "R"], valid: Optional[Bool[Tensor, "R"]]) -> Float[Tensor, ""]:
    if valid is None:
        return values.mean()
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp_min(1)


def centred_clip_supervision_loss(
    rendered: Float[Tensor, "R D"],
    targets: Float[Tensor, "R Ns D"],
    selection: Float[Tensor, "R Ns"],
    valid: Optional[Bool[Tensor, "R"]] = None,
    normalize_scales: bool = False,
) -> Float[Tensor, ""]:
    """Eq. 3's cosine plus the cosine of the same features with the batch's mean target removed.

    ``mean_r -[cos(f, t) + cos(f - m, t - m)]`` with ``f``, ``t`` the unit rendered and selected
    features and ``m`` the mean unit target of the (valid) rays, held constant. Not in the
    paper: pixel-CLIP targets share a large common component (rendered-target cosines reach
    0.999 while the centred ones stay at 0.2-0.4, docs/benchmarks.md), so Eq. 3 alone is nearly
    satisfied before the field tells the objects apart; the centred half measures only what
    differs between targets. The plain half keeps the common component, which the labels'
    text cosines also see.
    """
    selected = selected_targets(targets, selection, normalize_scales)
    unit_rendered = F.normalize(rendered, dim=-1, eps=FEATURE_EPS)
    unit_target = F.normalize(selected, dim=-1, eps=FEATURE_EPS)
    weights = torch.ones_like(unit_target[:, 0]) if valid is None else valid.to(unit_target.dtype)
    centre = ((weights[:, None] * unit_target).sum(0) / weights.sum().clamp_min(1)).detach()
    plain = (unit_rendered * unit_target).sum(-1)
    centred = (F.normalize(unit_rendered - centre, dim=-1, eps=FEATURE_EPS) * F.normalize(unit_target - centre, dim=-1, eps=FEATURE_EPS)).sum(-1)
    return -_valid_mean(plain + centred, valid)


def selection_loss(
    selection: Float[Tensor, "R Ns"],
    target: Float[Tensor, "R Ns"],
) -> Float[Tensor, ""]:
    """``mean_r KL(target(r) || S(r))``: trains the rendered selection towards a target selection.

    Not in the paper (there Eq. 3's gradient alone trains the selection). Zero when they agree;
    clamped logs keep one-hot targets and saturated selections finite.
    """
    tiny = _tiny(selection)
    log_ratio = torch.log(target.clamp_min(tiny)) - torch.log(selection.clamp_min(tiny))
    return (target * log_ratio).sum(dim=-1).mean()


def segmentation_logits(
    rendered: Float[Tensor, "*batch D"],
    text: Float[Tensor, "C D"],
) -> Float[Tensor, "*batch C"]:
    """Eq. 4: ``z = cos(T, F^)``, one cosine per class; the label is ``argmax z``.

    The cosine of Eq. 6 (:func:`class_cosines`), applied to rendered features. Both sides are
    normalised there (not trusted to be unit already) so the logits stay in
    [-1, 1] whatever the head outputs; that range is what the temperature tau of Eq. 10 and
    the plain softmax of Eq. 5 were tuned for.
    """
    return class_cosines(rendered, text)


def dot_product_logits(
    rendered: Float[Tensor, "*batch D"],
    text: Float[Tensor, "C D"],
) -> Float[Tensor, "*batch C"]:
    """The official code's RDA logits: ``z = F^ . T / |T|``, the rendered feature left unnormalised.

    Not Eq. 4: the feature's norm, which the cosine distillation loss leaves free, multiplies
    the cosines and acts as a learned per-ray inverse temperature, so softmax(z) can be as
    sharp as the relevancy target. With Eq. 4's cosines in [-1, 1] softmax(z) stays close to
    uniform. ``argmax`` (the label) is the same for both.
    """
    return rendered @ F.normalize(text, dim=-1, eps=FEATURE_EPS).T


def js_divergence(
    p: Float[Tensor, "*batch"],
    q: Float[Tensor, "*batch"],
    dim: int = -1,
) -> Float[Tensor, "*reduced"]:
    """Jensen-Shannon divergence of probability vectors along ``dim`` (the core of Eqs. 8, 11).

    ``JS = sum_c (p_c log(p_c / m_c) + q_c log(q_c / m_c)) / 2`` with ``m = (p + q) / 2``,
    natural log, so the range is [0, log 2]. The paper calls JS bounded by 1, which would
    need log base 2; the official code uses the natural log and its weights (relevancy 1,
    dino_pos 200, dino_neg 0.2) were tuned with it, so the natural log is kept.

    Logs are taken of values clamped to the dtype's smallest normal number: exact zeros
    (one-hot or underflowed softmax outputs) then give ``0 * finite = 0`` in the value
    and finite gradients, where a plain ``log`` gives NaN (0 * -inf).
    """
    tiny = _tiny(p)
    log_m = torch.log((0.5 * (p + q)).clamp_min(tiny))
    kl_pm = (p * (torch.log(p.clamp_min(tiny)) - log_m)).sum(dim)
    kl_qm = (q * (torch.log(q.clamp_min(tiny)) - log_m)).sum(dim)
    return 0.5 * (kl_pm + kl_qm)


def selected_relevancy(
    normalized_relevancy: Float[Tensor, "R Ns C"],
    selection: Float[Tensor, "R Ns"],
) -> Float[Tensor, "R C"]:
    """Eq. 6 per ray: the rendered selection S(r) mixes the ray's per-scale relevancies.

    The input is already min-max normalised per view, per scale, per class (Eq. 7, see
    :mod:`ovs3d_nerfstudio.features.relevancy`). The paper instead normalises the
    *selected* map ``S_I cos(T, F_I)`` over the image; that needs the rendered selection
    of every pixel of the view at every step, which a random ray batch does not have, so
    the official code's order (normalise each scale, then select) is used. Since S(r) is
    a convex combination, the result still lies in [0, 1]. Gradients reach the selection.
    """
    return torch.einsum("rs,rsc->rc", selection, normalized_relevancy)


def rda_loss(
    logits: Float[Tensor, "R C"],
    selected_relevancy: Float[Tensor, "R C"],
    sharpening: Optional[float] = None,
) -> Float[Tensor, ""]:
    """Relevancy-Distribution Alignment, Eqs. 5 and 8: ``mean_r JS(softmax(z) || softmax(R_bar))``.

    P(r) = softmax(z(r)) (Eq. 5) is pulled towards the softmax over classes of the
    spatially normalised relevancy, so a class that is relatively most relevant at a pixel
    wins even where another class has the larger absolute CLIP score (Fig. 2). JS rather
    than KL because it is symmetric and bounded. Averaged over rays (paper: sum), as in
    the official code.

    ``sharpening`` (not in the paper) is a temperature tau applied to the target the way
    Eq. 10 applies it to FDA's logits: R_bar lies in [0, 1], half the range of the cosines
    Eq. 10 sharpens, so it is first mapped onto [-1, 1], giving ``softmax((2 R_bar - 1) / tau)
    = softmax(R_bar / (tau / 2))``. As printed (None) the target prefers its best class at
    most e-fold over any other: a pixel whose object relevancy is 1.0 and background
    relevancy 0.8 gets 0.29 vs 0.24, too weak to move a label.
    """
    target = selected_relevancy if sharpening is None else (2.0 * selected_relevancy - 1.0) / sharpening
    return js_divergence(torch.softmax(logits, dim=-1), torch.softmax(target, dim=-1)).mean()


def dino_correlation(tokens: Float[Tensor, "P N Cd"]) -> Float[Tensor, "P N N"]:
    """Eq. 9: ``Corr_F[hw, ij] = cos(f_hw, f_ij)`` between the DINO tokens of each patch."""
    unit = F.normalize(tokens, dim=-1, eps=FEATURE_EPS)
    return unit @ unit.transpose(-1, -2)


def _count_guard(count: Tensor) -> Tensor:
    # With no non-zero entry the matching sum is exactly 0: divide by 1, not 0.
    return count.clamp_min(1)


def fda_loss_dense(
    logits: Float[Tensor, "P N C"],
    dino_tokens: Float[Tensor, "P N Cd"],
    tau: float = 0.2,
    shift: float = 0.7,
    lambda_pos: float = 200.0,
    lambda_neg: float = 0.2,
) -> Tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """Eqs. 9-14 written out literally; materialises a [P, N, N, C] tensor.

    The reference for :func:`fda_loss` (tests, benchmark); too big for real patch sizes on
    small GPUs. Returns the two weighted halves of Eq. 14, ``(pos, neg)``; their sum is
    L_FDA. DINO is a frozen teacher: its tokens get no gradient.
    """
    corr_f = dino_correlation(dino_tokens.detach())  # Eq. 9
    p_sharp = torch.softmax(logits / tau, dim=-1)  # Eq. 10
    corr_d = js_divergence(p_sharp[:, :, None, :], p_sharp[:, None, :, :])  # Eq. 11, [P, N, N]
    pos_f = torch.clamp(corr_f - shift, min=0)  # Eq. 13
    neg_f = torch.clamp(corr_f - shift, max=0)
    pos = lambda_pos * (pos_f * corr_d).sum() / _count_guard(torch.count_nonzero(pos_f))  # Eq. 14
    neg = lambda_neg * (neg_f * corr_d).sum() / _count_guard(torch.count_nonzero(neg_f))
    return pos, neg


def _pair_sums(p_rows: Tensor, p_t: Tensor) -> Tensor:
    """``s[p, i, c, j] = p_rows[p, i, c] + p_t[p, c, j]``, clamped so its log is finite.

    Classes sit before the column index so reductions over C add contiguous planes.
    """
    return (p_rows[..., None] + p_t[:, None]).clamp_min_(_tiny(p_t))


def _fda_weights(corr_f: Tensor, shift: float, pos_scale: Tensor, neg_scale: Tensor) -> Tensor:
    """The per-pair weight of Eq. 14: ``pos_scale * pos_F + neg_scale * neg_F``."""
    centred = corr_f - shift
    return pos_scale * centred.clamp(min=0) + neg_scale * centred.clamp(max=0)


class _ChunkedFDA(torch.autograd.Function):
    """Both halves of Eq. 14 from log P' and Corr_F, never holding more than a row chunk.

    With ``s = p_i + p_j`` (so M = s / 2) and ``h`` the entropy of each P'_hw, Eq. 11 is
    ``JS_ij = log 2 - sum_c s log s / 2 - (h_i + h_j) / 2``: only the pair term needs
    [chunk, N, C] memory. The backward is analytic, ``dJS(p, q)/dp = log(p / m) / 2``, so
    it needs one more pass over the chunks and no saved activations; for a weight matrix
    W, ``d/dp_k sum_ij W_ij JS_ij = sum_j Wsym_kj log(p_k / m_kj)`` with
    ``Wsym = (W + W^T) / 2`` (JS is symmetric), hence only rows are visited. The diagonal
    pairs (JS(p, p) = 0, zero gradient) are skipped, so the entropy form's cancellation
    cannot add rounding noise to pixels compared with themselves, which are always in pos_F.
    """

    @staticmethod
    def forward(ctx, log_p, corr_f, shift, lambda_pos, lambda_neg, chunk_size):
        # count_nonzero(clamp(c - b, min=0)) == count(c > b) in IEEE arithmetic, without two
        # float [P, N, N] temporaries; tensors, not .item(), so a GPU is not synchronised.
        pos_count = _count_guard((corr_f > shift).sum()).to(log_p.dtype)
        neg_count = _count_guard((corr_f < shift).sum()).to(log_p.dtype)
        p = log_p.exp()
        p_t = p.transpose(1, 2).contiguous()
        entropy = -(p * log_p).sum(-1)  # h_i, [P, N]
        pos_sum = log_p.new_zeros(())
        neg_sum = log_p.new_zeros(())
        for start in range(0, p.shape[1], chunk_size):
            rows = slice(start, start + chunk_size)
            s = _pair_sums(p[:, rows], p_t)
            s_log_s = s.mul_(s.log()).sum(2)  # [P, k, N]
            js = _LOG2 - 0.5 * (s_log_s + entropy[:, rows, None] + entropy[:, None, :])
            js.diagonal(offset=start, dim1=1, dim2=2).zero_()  # JS(p, p) = 0: no rounding noise
            centred = corr_f[:, rows] - shift
            pos_sum += (centred.clamp(min=0) * js).sum()
            neg_sum += (centred.clamp(max=0) * js).sum()
        ctx.save_for_backward(log_p, corr_f)
        ctx.shift, ctx.chunk_size = shift, chunk_size
        ctx.pos_scale, ctx.neg_scale = lambda_pos / pos_count, lambda_neg / neg_count
        return ctx.pos_scale * pos_sum, ctx.neg_scale * neg_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pos, grad_neg):
        log_p, corr_f = ctx.saved_tensors
        pos_scale = grad_pos * ctx.pos_scale
        neg_scale = grad_neg * ctx.neg_scale
        p = log_p.exp()
        p_t = p.transpose(1, 2).contiguous()
        grad_p = torch.empty_like(p)
        for start in range(0, p.shape[1], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            w_sym = 0.5 * (
                _fda_weights(corr_f[:, rows], ctx.shift, pos_scale, neg_scale)
                + _fda_weights(corr_f[:, :, rows].transpose(1, 2), ctx.shift, pos_scale, neg_scale)
            ).contiguous()  # [P, k, N]
            w_sym.diagonal(offset=start, dim1=1, dim2=2).zero_()  # log(p / m) = 0 on the diagonal
            log_s = _pair_sums(p[:, rows], p_t).log_()  # [P, k, C, N]
            weighted_log_s = torch.matmul(log_s, w_sym[..., None])[..., 0]  # sum_j W_kj log s_kj
            # log(p_k / m_kj) = log p_k - log s_kj + log 2
            grad_p[:, rows] = (log_p[:, rows] + _LOG2) * w_sym.sum(-1, keepdim=True) - weighted_log_s
        return grad_p * p, None, None, None, None, None


def fda_loss(
    logits: Float[Tensor, "P N C"],
    dino_tokens: Float[Tensor, "P N Cd"],
    tau: float = 0.2,
    shift: float = 0.7,
    lambda_pos: float = 200.0,
    lambda_neg: float = 0.2,
    chunk_size: int = 128,
) -> Tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """Feature-Distribution Alignment, Eqs. 9-14, in O(P * chunk_size * N * C) memory beyond Corr_F.

    Same value and gradient (w.r.t. ``logits``) as :func:`fda_loss_dense`, which holds the
    whole [P, N, N, C] pair tensor; here rows ``hw`` of Corr_D are processed
    ``chunk_size`` at a time in the forward and again in an analytic backward (see
    ``_ChunkedFDA``), so only Corr_F ([P, N, N]) is kept. A custom backward was chosen
    over ``torch.utils.checkpoint`` per chunk by measurement (P=8, N=1024, C=7, 2-core
    CPU, chunks of 32-256 rows): 1.1-2x faster and about a third of checkpoint's peak
    memory, since it neither replays the forward nor builds an autograd graph per chunk.

    Returns ``(pos, neg)``, the two weighted halves of Eq. 14 (L_FDA = pos + neg): pos
    pulls together the distributions of pixels whose DINO features agree (cos > shift),
    neg (<= 0) pushes apart the others. count_nonzero runs over all patches' entries, as
    in Eq. 14 and the official code; a zero count gives a zero half. DINO is a frozen
    teacher: its tokens get no gradient. Logits are the cosines of Eq. 4, sharpened by
    ``tau`` (Eq. 10).
    """
    log_p = torch.log_softmax(logits / tau, dim=-1)
    with torch.no_grad():  # in log_p's precision: the 0.7 threshold is sensitive to fp16 rounding
        corr_f = dino_correlation(dino_tokens.to(log_p.dtype))
    return _ChunkedFDA.apply(log_p, corr_f, shift, lambda_pos, lambda_neg, chunk_size)


def kl_correlation(log_p: Float[Tensor, "P N C"]) -> Float[Tensor, "P N N"]:
    """``KL(P'_hw || P'_ij)`` for every pair of a patch: what the official code's ``js_correlation(a, a)`` computes.

    The official code builds its mixture M from the *same* position of its two identical
    inputs, so M = P'_ij and the "JS" is a KL. ``KL_ij = -h_i - sum_c p_ic log p_jc``: one
    [N, C] x [C, N] product per patch, no [N, N, C] tensor.
    """
    p = log_p.exp()
    return (p * log_p).sum(-1, keepdim=True) - p @ log_p.transpose(1, 2)


def fda_loss_kl(
    logits: Float[Tensor, "P N C"],
    dino_tokens: Float[Tensor, "P N Cd"],
    tau: float = 0.2,
    shift: float = 0.7,
    lambda_pos: float = 200.0,
    lambda_neg: float = 0.2,
) -> Tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """Eq. 14 with the official code's Corr_D (:func:`kl_correlation`) in place of Eq. 11's JS.

    Unlike JS, KL is unbounded: the negative half can push dissimilar pairs apart without
    limit, and a confident wrong pair costs more. Returns ``(pos, neg)`` like :func:`fda_loss`.
    """
    log_p = torch.log_softmax(logits / tau, dim=-1)
    with torch.no_grad():
        centred = dino_correlation(dino_tokens.to(log_p.dtype)) - shift
        pos_f, neg_f = centred.clamp(min=0), centred.clamp(max=0)
    corr_d = kl_correlation(log_p)
    pos = lambda_pos * (pos_f * corr_d).sum() / _count_guard(torch.count_nonzero(pos_f))
    neg = lambda_neg * (neg_f * corr_d).sum() / _count_guard(torch.count_nonzero(neg_f))
    return pos, neg
