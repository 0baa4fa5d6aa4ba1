"""One rasterization call for both devices: gsplat's CUDA kernels on CUDA, the torch rasterizer elsewhere.

gsplat is imported only when the Gaussians are on a CUDA device: on a machine without a GPU
its first CUDA call would start a multi-minute JIT build (and then fail).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from jaxtyping import Float
from torch import Tensor

from ovs3d_nerfstudio.splat.rasterize_torch import RenderMode, rasterize_gaussians


def rasterize(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    colors: Float[Tensor, "*C N D"],
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
    backgrounds: Optional[Float[Tensor, "C D"]] = None,
    render_mode: RenderMode = "RGB",
    packed: bool = True,
    absgrad: bool = False,
) -> Tuple[Float[Tensor, "C H W X"], Float[Tensor, "C H W 1"], Dict]:
    """``(channels, alphas, meta)`` of ``gsplat.rasterization`` with ``sh_degree=None``, classic mode.

    On CUDA every channel goes through one kernel pass (``channel_chunk`` = the channel count),
    ``packed`` as given (packed suits many patch cameras), ``absgrad`` for densification;
    elsewhere the torch rasterizer, whose meta is always in the non-packed [C, N] layout and
    whose ``means2d`` carries plain gradients only (``absgrad`` is a CUDA-backward feature).
    """
    common = dict(
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, tile_size=tile_size, backgrounds=backgrounds,
        render_mode=render_mode,
    )
    if means.is_cuda:
        from gsplat import rasterization  # CUDA only: see the module docstring

        return rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=None, packed=packed,
            absgrad=absgrad, rasterize_mode="classic", channel_chunk=max(32, colors.shape[-1] + 1), **common,
        )
    return rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **common)
