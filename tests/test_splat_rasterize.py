"""The pure-torch Gaussian rasterizer against a literal per-pixel loop, gradcheck, gsplat's torch
projection and, where CUDA is present, gsplat's CUDA rasterizer.

Without CUDA, conftest replaces gsplat's compiled backend by a module that refuses every use,
so a test here that reached a gsplat CUDA function would fail instead of starting a JIT build.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from ovs3d_nerfstudio.splat.rasterize import rasterize
from ovs3d_nerfstudio.splat.rasterize_torch import project_gaussians, rasterize_gaussians


def look_at_viewmat(eye, target, dtype=torch.float64) -> torch.Tensor:
    """World-to-camera matrix, OpenCV axes (x right, y down, z forward)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, -1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    viewmat = np.eye(4)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ eye
    return torch.tensor(viewmat, dtype=dtype)


def intrinsics(fx, fy, cx, cy, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def scene(dtype=torch.float64) -> Dict[str, torch.Tensor]:
    """Ten Gaussians seen by two cameras, chosen so that every kernel rule is exercised:
    a stack of near-opaque ones (the 0.999 clamp and the transmittance stop), faint ones
    (alpha < 1/255), one behind the first camera, one off-screen, anisotropic rotated ones."""
    generator = torch.Generator().manual_seed(3)
    means = torch.cat(
        [
            torch.tensor([[0.0, 0.0, 2.0], [0.02, 0.01, 2.2], [-0.01, 0.0, 2.4]]),  # opaque stack
            torch.rand(4, 3, generator=generator) * torch.tensor([1.2, 0.9, 1.5]) - torch.tensor([0.6, 0.45, -1.8]),
            torch.tensor([[0.3, -0.2, -1.5], [9.0, 0.0, 2.0], [0.1, 0.1, 3.5]]),  # behind, off-screen, faint
        ]
    )
    quats = torch.randn(10, 4, generator=generator)
    scales = torch.rand(10, 3, generator=generator) * 0.25 + 0.03
    scales[:3] = 0.15
    # The first mean projects onto a pixel centre of the first camera: alpha there is clamped to 0.999.
    opacities = torch.cat([torch.tensor([1.0, 0.998, 0.999]), torch.rand(4, generator=generator) * 0.7 + 0.2,
                           torch.tensor([0.8, 0.9, 0.01])])
    colors = torch.rand(10, 5, generator=generator)
    viewmats = torch.stack([look_at_viewmat([0, 0, 0], [0, 0, 1]), look_at_viewmat([0.4, -0.2, -0.3], [0, 0, 2.5])])
    Ks = torch.stack([intrinsics(18.0, 17.0, 11.5, 8.5), intrinsics(15.0, 15.0, 10.0, 9.0)])
    backgrounds = torch.rand(2, 5, generator=generator)
    tensors = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
                   Ks=Ks, backgrounds=backgrounds)
    return {name: value.to(dtype) for name, value in tensors.items()}


# ------------------------------------------------------------- the literal reference
def reference_render(s: Dict[str, torch.Tensor], camera: int, width: int, height: int, tile_size: int,
                     near=0.01, far=1e10, eps2d=0.3) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """Each rule of the CUDA kernels written out per Gaussian and per pixel in float64 numpy.

    Returns the image (with background), the alpha map and how often each rule fired."""
    viewmat, K = s["viewmats"][camera].numpy(), s["Ks"][camera].numpy()
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tiles_wide, tiles_high = math.ceil(width / tile_size), math.ceil(height / tile_size)
    projected = []
    for n in range(len(s["means"])):
        w, x, y, z = s["quats"][n].numpy() / np.linalg.norm(s["quats"][n].numpy())
        rotation = np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ])
        covariance = rotation @ np.diag(s["scales"][n].numpy() ** 2) @ rotation.T
        mean_c = viewmat[:3, :3] @ s["means"][n].numpy() + viewmat[:3, 3]
        if not near <= mean_c[2] <= far:
            continue
        covariance_c = viewmat[:3, :3] @ covariance @ viewmat[:3, :3].T
        xc, yc, zc = mean_c
        tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
        tx = zc * min((width - cx) / fx + 0.3 * tan_x, max(-(cx / fx + 0.3 * tan_x), xc / zc))
        ty = zc * min((height - cy) / fy + 0.3 * tan_y, max(-(cy / fy + 0.3 * tan_y), yc / zc))
        J = np.array([[fx / zc, 0, -fx * tx / zc**2], [0, fy / zc, -fy * ty / zc**2]])
        cov2 = J @ covariance_c @ J.T + eps2d * np.eye(2)
        det = np.linalg.det(cov2)
        if det <= 0:
            continue
        conic = np.linalg.inv(cov2)
        mx, my = fx * xc / zc + cx, fy * yc / zc + cy
        half_trace = 0.5 * (cov2[0, 0] + cov2[1, 1])
        radius = math.ceil(3 * math.sqrt(half_trace + math.sqrt(max(0.01, half_trace**2 - det))))
        if radius <= 0 or mx + radius <= 0 or mx - radius >= width or my + radius <= 0 or my - radius >= height:
            continue
        tiles = [min(max(0, f((m + sign * radius) / tile_size)), limit)
                 for m, sign, f, limit in ((mx, -1, math.floor, tiles_wide), (my, -1, math.floor, tiles_high),
                                           (mx, 1, math.ceil, tiles_wide), (my, 1, math.ceil, tiles_high))]
        projected.append((zc, n, mx, my, conic, tiles))
    projected.sort(key=lambda entry: (entry[0], entry[1]))

    colors, opacities = s["colors"].numpy(), s["opacities"].numpy()
    image = np.zeros((height, width, colors.shape[1]))
    alpha_map = np.zeros((height, width, 1))
    fired = {"clamped": 0, "faint": 0, "stopped": 0, "composited": 0}
    for py in range(height):
        for px in range(width):
            T, out = 1.0, np.zeros(colors.shape[1])
            for _, n, mx, my, conic, (x0, y0, x1, y1) in projected:
                if not (x0 <= px // tile_size < x1 and y0 <= py // tile_size < y1):
                    continue
                dx, dy = mx - (px + 0.5), my - (py + 0.5)
                sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
                alpha = min(0.999, opacities[n] * math.exp(-sigma))
                fired["clamped"] += opacities[n] * math.exp(-sigma) > 0.999
                if sigma < 0 or alpha < 1 / 255:
                    fired["faint"] += 1
                    continue
                if T * (1 - alpha) <= 1e-4:
                    fired["stopped"] += 1
                    break
                out += colors[n] * alpha * T
                T *= 1 - alpha
                fired["composited"] += 1
            image[py, px] = out + T * s["backgrounds"][camera].numpy()
            alpha_map[py, px] = 1 - T
    return image, alpha_map, fired


@pytest.mark.parametrize("tile_size", [8, 16])
def test_the_rasterizer_matches_a_literal_per_pixel_loop(tile_size):
    s = scene()
    width, height = 23, 17  # not a multiple of the tile size: partial tiles at the border
    rendered, alphas, meta = rasterize_gaussians(**{k: v for k, v in s.items()}, width=width, height=height,
                                                 tile_size=tile_size)
    assert rendered.shape == (2, height, width, 5) and alphas.shape == (2, height, width, 1)
    for camera in range(2):
        image, alpha_map, fired = reference_render(s, camera, width, height, tile_size)
        np.testing.assert_allclose(rendered[camera].numpy(), image, rtol=0, atol=1e-12)
        np.testing.assert_allclose(alphas[camera].numpy(), alpha_map, rtol=0, atol=1e-12)
        if camera == 0:  # the scene exercises every rule, so the agreement covers them all
            assert all(count > 0 for count in fired.values()), fired
    radii = meta["radii"]
    assert radii[0, 7] == 0 and radii[0, 8] == 0  # behind the first camera; off-screen
    assert meta["means2d"].shape == (2, 10, 2) and meta["n_cameras"] == 2


def test_chunked_compositing_gives_the_same_image():
    s = scene()
    whole, whole_alpha, _ = rasterize_gaussians(**s, width=23, height=17, tile_size=8)
    chunked, chunked_alpha, _ = rasterize_gaussians(**s, width=23, height=17, tile_size=8, max_elements=64)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-14)
    torch.testing.assert_close(chunked_alpha, whole_alpha, rtol=0, atol=1e-14)


def test_per_camera_colours_render_each_camera_with_its_own():
    s = scene()
    per_camera = torch.stack([s["colors"], 1 - s["colors"]])
    rendered, _, _ = rasterize_gaussians(**{**s, "colors": per_camera}, width=23, height=17)
    flipped, _, _ = rasterize_gaussians(**{**s, "colors": 1 - s["colors"]}, width=23, height=17)
    shared, _, _ = rasterize_gaussians(**s, width=23, height=17)
    torch.testing.assert_close(rendered[0], shared[0])
    torch.testing.assert_close(rendered[1], flipped[1])


def test_depth_modes_render_z_without_background():
    s = scene()
    common = dict(width=23, height=17)
    rgb_d, alphas, _ = rasterize_gaussians(**s, render_mode="RGB+D", **common)
    depth, _, _ = rasterize_gaussians(**s, render_mode="D", **common)
    expected, _, _ = rasterize_gaussians(**s, render_mode="ED", **common)
    rgb, _, _ = rasterize_gaussians(**s, **common)
    assert rgb_d.shape[-1] == 6 and depth.shape[-1] == 1
    torch.testing.assert_close(rgb_d[..., :5], rgb)
    torch.testing.assert_close(rgb_d[..., 5:], depth)  # the depth channel gets no background
    torch.testing.assert_close(expected, depth / alphas.clamp_min(1e-10))
    # At the centre of the opaque stack (first camera) nearly all weight is on the z = 2 Gaussian.
    centre = expected[0, 8, 11, 0]
    assert 2.0 <= float(centre) < 2.01


def test_a_patch_camera_renders_the_crop_of_the_full_view():
    """FDA patches are cameras with the principal point moved by the patch origin. With a
    tile-aligned origin and the Gaussians inside the patch, the patch is the full render's crop."""
    s = scene()
    inside = torch.tensor([0, 1, 2])  # the opaque stack projects near the image centre
    s = {**s, **{k: s[k][inside] for k in ("means", "quats", "scales", "opacities", "colors")}}
    s = {**s, "viewmats": s["viewmats"][:1], "Ks": s["Ks"][:1], "backgrounds": s["backgrounds"][:1]}
    full, full_alpha, _ = rasterize_gaussians(**s, width=32, height=24, tile_size=8)
    origin_x, origin_y = 8, 8
    patch_K = s["Ks"].clone()
    patch_K[:, 0, 2] -= origin_x
    patch_K[:, 1, 2] -= origin_y
    patch, patch_alpha, _ = rasterize_gaussians(**{**s, "Ks": patch_K}, width=16, height=16, tile_size=8)
    torch.testing.assert_close(patch, full[:, origin_y:origin_y + 16, origin_x:origin_x + 16], rtol=0, atol=1e-12)
    torch.testing.assert_close(patch_alpha, full_alpha[:, origin_y:origin_y + 16, origin_x:origin_x + 16])


# ----------------------------------------------------------------------- gradients
def test_gradients_pass_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(0)
    means = (torch.rand(3, 3, generator=generator, dtype=torch.float64) - 0.5) * torch.tensor(
        [0.6, 0.5, 0.4], dtype=torch.float64) + torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)
    inputs = (
        means,
        torch.randn(3, 4, generator=generator, dtype=torch.float64),
        torch.rand(3, 3, generator=generator, dtype=torch.float64) * 0.2 + 0.15,
        torch.rand(3, generator=generator, dtype=torch.float64) * 0.5 + 0.3,  # no stop: smooth
        torch.rand(3, 3, generator=generator, dtype=torch.float64),
        torch.rand(1, 3, generator=generator, dtype=torch.float64),
    )
    inputs = tuple(t.requires_grad_() for t in inputs)
    viewmats = look_at_viewmat([0, 0, 0], [0, 0, 1])[None]
    Ks = intrinsics(6.0, 6.0, 3.0, 2.5)[None]

    def render(means, quats, scales, opacities, colors, backgrounds):
        rendered, alphas, _ = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, 6, 5,
                                                  tile_size=4, backgrounds=backgrounds, render_mode="RGB+ED")
        return rendered, alphas

    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6)


def test_screen_space_gradients_reach_means2d_for_densification():
    s = {k: v.float() for k, v in scene().items()}
    for name in ("means", "scales", "opacities", "colors"):
        s[name].requires_grad_()
    rendered, alphas, meta = rasterize_gaussians(**s, width=23, height=17)
    meta["means2d"].retain_grad()
    (rendered.sum() + alphas.sum()).backward()
    grad = meta["means2d"].grad
    assert grad is not None and grad.shape == (2, 10, 2)
    visible = meta["radii"] > 0
    assert torch.all(grad[~visible] == 0)
    assert grad[visible].abs().sum(-1).gt(0).any()
    for name in ("means", "scales", "opacities", "colors"):
        assert torch.isfinite(s[name].grad).all() and s[name].grad.abs().sum() > 0, name


# --------------------------------------------------------------- degenerate inputs
def backward_is_finite(s: Dict[str, torch.Tensor], **kwargs) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
    leaves = {k: v.clone().requires_grad_() for k, v in s.items() if k in ("means", "quats", "scales", "opacities", "colors")}
    rendered, alphas, _ = rasterize_gaussians(**{**s, **leaves}, **kwargs)
    (rendered.square().sum() + alphas.sum()).backward()
    grads = [leaves[k].grad for k in leaves]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return rendered.detach(), alphas.detach(), grads


def test_no_gaussian_in_view_renders_the_background():
    s = scene()
    s["means"] = s["means"] * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64) - torch.tensor([0, 0, 5.0],
                                                                                                   dtype=torch.float64)
    s["viewmats"] = s["viewmats"][:1]
    s["Ks"], s["backgrounds"] = s["Ks"][:1], s["backgrounds"][:1]
    rendered, alphas, grads = backward_is_finite(s, width=12, height=9)
    torch.testing.assert_close(rendered, s["backgrounds"][:, None, None, :].expand(1, 9, 12, 5))
    assert torch.all(alphas == 0)
    assert all(torch.all(g == 0) for g in grads)


def test_zero_opacity_renders_the_background_with_finite_gradients():
    s = scene()
    s["opacities"] = torch.zeros_like(s["opacities"])
    rendered, alphas, grads = backward_is_finite(s, width=23, height=17)
    torch.testing.assert_close(rendered, s["backgrounds"][:, None, None, :].expand_as(rendered))
    assert torch.all(alphas == 0)


def test_gaussians_behind_or_at_the_camera_change_nothing_and_stay_finite():
    s = scene()
    keep = torch.arange(7)
    alone = {**s, **{k: s[k][keep] for k in ("means", "quats", "scales", "opacities", "colors")}}
    extra = {  # one exactly in the camera plane (z = 0 divides by zero), one behind it
        "means": torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, -0.5]], dtype=torch.float64),
        "quats": torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64),
        "scales": torch.full((2, 3), 0.3, dtype=torch.float64),
        "opacities": torch.full((2,), 0.9, dtype=torch.float64),
        "colors": torch.ones(2, 5, dtype=torch.float64),
    }
    s1 = {**s, "viewmats": s["viewmats"][:1], "Ks": s["Ks"][:1], "backgrounds": s["backgrounds"][:1]}
    alone = {**alone, "viewmats": s1["viewmats"], "Ks": s1["Ks"], "backgrounds": s1["backgrounds"]}
    with_extra = {**s1, **{k: torch.cat([alone[k], extra[k]]) for k in extra}}
    expected, expected_alpha, _ = backward_is_finite(alone, width=23, height=17)
    rendered, alphas, grads = backward_is_finite(with_extra, width=23, height=17)
    torch.testing.assert_close(rendered, expected, rtol=0, atol=0)
    torch.testing.assert_close(alphas, expected_alpha, rtol=0, atol=0)
    assert all(torch.all(g[-2:] == 0) for g in grads)  # culled: no gradient


def test_no_gaussians_at_all():
    s = scene()
    empty = {k: s[k][:0] for k in ("means", "quats", "scales", "opacities", "colors")}
    rendered, alphas, meta = rasterize_gaussians(**{**s, **empty}, width=7, height=5)
    torch.testing.assert_close(rendered, s["backgrounds"][:, None, None, :].expand(2, 5, 7, 5))
    assert torch.all(alphas == 0) and meta["radii"].shape == (2, 0)


def test_bad_arguments_are_refused():
    s = scene()
    with pytest.raises(ValueError, match="render_mode"):
        rasterize_gaussians(**s, width=7, height=5, render_mode="RGBD")
    with pytest.raises(ValueError, match="colors"):
        rasterize_gaussians(**{**s, "colors": s["colors"][:4]}, width=7, height=5)


# ----------------------------------------------------------------- against gsplat
def test_the_projection_matches_gsplats_torch_reference():
    """gsplat's own pure-torch projection (CPU-safe: it calls no CUDA kernel) on Gaussians in front of the camera."""
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    s = {k: v.float() for k, v in scene().items()}
    front = torch.arange(7)
    means, quats, scales = s["means"][front], s["quats"][front], s["scales"][front]
    ours = project_gaussians(means, quats, scales, s["viewmats"], s["Ks"], 23, 17)
    covars, _ = torch_impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = torch_impl._fully_fused_projection(means, covars, s["viewmats"], s["Ks"], 23, 17)
    assert torch.equal(ours.radii, radii)
    seen = radii > 0
    assert seen.sum() >= 8
    torch.testing.assert_close(ours.means2d[seen], means2d[seen])
    torch.testing.assert_close(ours.depths, depths)
    torch.testing.assert_close(ours.conics[seen], conics[seen], rtol=1e-4, atol=1e-6)


def test_the_dispatcher_renders_with_torch_on_cpu():
    s = {k: v.float() for k, v in scene().items()}
    dispatched, alphas, meta = rasterize(**s, width=23, height=17)
    direct, direct_alphas, _ = rasterize_gaussians(**s, width=23, height=17)
    torch.testing.assert_close(dispatched, direct, rtol=0, atol=0)
    assert meta["radii"].shape == (2, 10)  # the non-packed layout of the torch path


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's rasterizer needs CUDA")
@pytest.mark.parametrize("packed", [False, True])
def test_cpu_rules_match_gsplat_on_cuda(packed):
    """Values and gradients of the torch rasterizer against gsplat's CUDA kernels (float32, fast-math exp)."""
    from gsplat import rasterization

    s = {k: v.float().cuda() for k, v in scene().items()}
    names = ("means", "quats", "scales", "opacities", "colors")

    def run(render):
        leaves = {k: s[k].clone().requires_grad_() for k in names}
        rendered, alphas, _ = render({**s, **leaves})
        weights = torch.linspace(0.5, 1.5, rendered.numel(), device="cuda").reshape(rendered.shape)
        ((rendered * weights).sum() + alphas.sum()).backward()
        return rendered.detach(), alphas.detach(), {k: leaves[k].grad for k in names}

    ours = run(lambda t: rasterize_gaussians(**t, width=23, height=17, tile_size=8, render_mode="RGB+D"))
    theirs = run(lambda t: rasterization(**t, width=23, height=17, tile_size=8, render_mode="RGB+D", packed=packed,
                                         sh_degree=None))
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-4)
    for name in names:
        torch.testing.assert_close(ours[2][name], theirs[2][name], rtol=1e-3, atol=1e-3, msg=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is installed only without CUDA")
def test_a_gsplat_cuda_call_without_cuda_fails_at_once_instead_of_building():
    """conftest's stand-in for gsplat's compiled backend: a stray call names itself in well under a
    second, where gsplat would start compiling its CUDA sources."""
    from conftest import GsplatCudaCallError

    gsplat = pytest.importorskip("gsplat")
    s = {k: v.float() for k, v in scene().items()}
    with pytest.raises(GsplatCudaCallError, match="without CUDA"):
        gsplat.rasterization(**s, width=23, height=17, sh_degree=None)
