"""Stage 3 of 3DSS-VLG, Embeddings Soft-Guidance (ESGS): the sparse 3D U-Net learns the frozen
adapter's embeddings of the fused features, so that at inference it segments points alone.

Facts from the official code (nothing copied): the loss is ``mean(1 - cos(F3D, A(fused)))``
over the points that have a 2D feature; the input is RGB in [-1, 1]; the learning rate follows
the poly schedule ``lr * (1 - t/T)^0.9`` (effective 1e-3); batches of 4 scenes; augmentation:
rotation by ±π about the up axis and ±π/64 about the other two, scaling by 0.9-1.1, a random
flip, colour jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .minkunet import MinkUNet, MinkUNetSpec
from .sparse_conv import SparseTensor
from .voxels import Voxelization, batch_coordinates, voxelize

POLY_POWER = 0.9
UP_ROTATION = math.pi
TILT_ROTATION = math.pi / 64
SCALE_RANGE = (0.9, 1.1)
COLOUR_TRANSLATION = 0.1
"""Largest shift of a whole cloud's colours (fraction of the [0, 1] range)."""
COLOUR_JITTER = 0.05
"""Standard deviation of per-point colour noise ([0, 1] range)."""


def cosine_distillation_loss(
    predicted: Float[Tensor, "N D"], target: Float[Tensor, "N D"], covered: Bool[Tensor, "N"]
) -> Tensor:
    """``mean over covered points of 1 - cos(predicted, target)``; 0 (with a gradient) when no
    point is covered; a zero vector has cosine 0 with anything (no NaN)."""
    if not bool(covered.any()):
        return predicted.sum() * 0.0
    return (1.0 - F.cosine_similarity(predicted[covered], target[covered], dim=1, eps=1e-8)).mean()


def voxel_cosine_loss(
    voxel_predicted: Float[Tensor, "V D"],
    point_to_voxel: Int[Tensor, "N"],
    unit_targets: Float[Tensor, "N D"],
    covered: Bool[Tensor, "N"],
) -> Tensor:
    """:func:`cosine_distillation_loss` of per-point predictions that are their voxel's, without
    materialising them: ``sum_p cos(F_v(p), t_p) = sum_v F_v/|F_v| · sum_{p in v} t_p`` for unit
    targets ``t_p``. Exact, and memory of the voxels' size, not the points'."""
    if not bool(covered.any()):
        return voxel_predicted.sum() * 0.0
    sums = torch.zeros_like(voxel_predicted).index_add_(
        0, point_to_voxel[covered], unit_targets[covered].to(voxel_predicted.dtype)
    )
    unit = F.normalize(voxel_predicted, dim=1, eps=1e-8)
    return 1.0 - (unit * sums).sum() / covered.sum()


def voxel_class_loss(
    voxel_predicted: Float[Tensor, "V D"],
    text: Float[Tensor, "C D"],
    point_to_voxel: Int[Tensor, "N"],
    point_probabilities: Float[Tensor, "N C"],
    covered: Bool[Tensor, "N"],
) -> Tensor:
    """Cross-entropy from each covered point's class distribution to its voxel's
    ``softmax(F_v · text)``, mean over covered points. Exact per voxel, as the loss is linear in
    the targets: ``sum_p -p_p · log q_v(p) = -sum_v (sum_{p in v} p_p) · log q_v``. 0 (with a
    gradient) when no point is covered."""
    if not bool(covered.any()):
        return voxel_predicted.sum() * 0.0
    sums = voxel_predicted.new_zeros(len(voxel_predicted), text.shape[0]).index_add_(
        0, point_to_voxel[covered], point_probabilities[covered].to(voxel_predicted.dtype)
    )
    log_q = F.log_softmax(voxel_predicted @ text.T.to(voxel_predicted.dtype), dim=1)
    return -(sums * log_q).sum() / covered.sum()


def poly_learning_rate(base: float, step: int, total: int, power: float = POLY_POWER) -> float:
    """``base * (1 - step/total)^power``."""
    return base * max(0.0, 1.0 - step / total) ** power


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix about a unit ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * k @ k


def horizontal_axes(up: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two unit axes orthogonal to ``up`` and to each other."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    helper = np.eye(3)[int(np.argmin(np.abs(up)))]
    first = np.cross(up, helper)
    first /= np.linalg.norm(first)
    return first, np.cross(up, first)


def augmentation_matrix(up: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation about up (±π), tilts about the horizontal axes (±π/64), scale 0.9-1.1, and a
    mirror across a vertical plane half of the time: one 3x3 linear map."""
    first, second = horizontal_axes(up)
    matrix = rotation_about(up, rng.uniform(-UP_ROTATION, UP_ROTATION))
    matrix = rotation_about(first, rng.uniform(-TILT_ROTATION, TILT_ROTATION)) @ matrix
    matrix = rotation_about(second, rng.uniform(-TILT_ROTATION, TILT_ROTATION)) @ matrix
    if rng.random() < 0.5:
        matrix = (np.eye(3) - 2.0 * np.outer(first, first)) @ matrix
    return rng.uniform(*SCALE_RANGE) * matrix


def jitter_colours(colours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random shift of the whole cloud's colours and per-point noise, clipped to [0, 1]."""
    shift = rng.uniform(-COLOUR_TRANSLATION, COLOUR_TRANSLATION, size=3)
    noise = rng.normal(0.0, COLOUR_JITTER, size=colours.shape)
    return np.clip(colours + shift + noise, 0.0, 1.0)


def network_input(xyz: np.ndarray, colours: np.ndarray, voxel_size: float) -> Tuple[Voxelization, Tensor]:
    """Voxels of the points and their mean colour in [-1, 1]."""
    voxels = voxelize(xyz, voxel_size)
    rgb = torch.from_numpy(np.asarray(colours, dtype=np.float32)) * 2.0 - 1.0
    return voxels, voxels.mean(rgb)


@dataclass
class EsgsConfig:
    """ESGS training; official settings by default, except the length (set it per budget) and
    the class term."""

    architecture: Union[str, MinkUNetSpec] = "MinkUNet18A"
    epochs: int = 100
    lr: float = 1e-3
    """Effective learning rate (the official 1e-4 with OpenScene's 10x group rule)."""
    scenes_per_batch: int = 4
    augment: bool = True
    seed: int = 0
    backend: str = "torch"
    device: str = "cpu"
    """Where the network trains (voxelisation and augmentation stay on the CPU)."""
    class_weight: float = 1.0
    """Weight of a class term beside the cosine (beyond the paper and the official code, which
    use the cosine alone: 0): the cross-entropy from the target's class distribution over the
    vocabulary to ``softmax(F · text)``. Both terms are optimal at the target itself; the class
    term weighs the part of the embedding that orders the labels, which the cosine nearly
    ignores when the targets share a large component (docs/vlg.md, stage 3)."""


@dataclass
class EsgsScene:
    """One training scene: points, colours, unit adapter targets (float16) where covered, its up
    direction and voxel size (in its own units); for the class term, each point's class
    distribution over the vocabulary."""

    xyz: np.ndarray
    colours: np.ndarray
    targets: Tensor
    covered: Tensor
    up: np.ndarray
    voxel_size: float
    class_targets: Optional[Tensor] = None

    def to(self, device: Union[str, torch.device]) -> "EsgsScene":
        """The same scene with its per-point tensors on ``device`` (copied once, not per step)."""
        moved = self.class_targets.to(device) if self.class_targets is not None else None
        return replace(self, targets=self.targets.to(device), covered=self.covered.to(device), class_targets=moved)


def network_device(network: MinkUNet) -> torch.device:
    return next(network.parameters()).device


def batch_forward(
    network: MinkUNet, inputs: Sequence[Tuple[Voxelization, Tensor]]
) -> List[Tensor]:
    """One forward pass over several scenes (on the network's device); each scene's per-voxel
    outputs, in its voxel order."""
    device = network_device(network)
    coords = batch_coordinates([voxels.coords for voxels, _ in inputs]).to(device)
    features = torch.cat([rgb for _, rgb in inputs]).to(device)
    out = network(SparseTensor(coords, features)).features
    return list(out.split([voxels.num_voxels for voxels, _ in inputs]))


def scene_loss(
    out: Tensor, voxels: Voxelization, scene: EsgsScene, class_weight: float, text: Optional[Tensor]
) -> Tensor:
    """The cosine to the scene's targets, plus ``class_weight`` times the class term; the scene
    and ``text`` are on the outputs' device, the voxelisation (new every step) is moved there."""
    point_to_voxel = voxels.point_to_voxel.to(out.device)
    loss = voxel_cosine_loss(out, point_to_voxel, scene.targets, scene.covered)
    if class_weight > 0.0:
        assert text is not None and scene.class_targets is not None
        loss = loss + class_weight * voxel_class_loss(out, text, point_to_voxel, scene.class_targets, scene.covered)
    return loss


def train_esgs(
    scenes: Sequence[EsgsScene],
    embed_dim: int,
    config: EsgsConfig = EsgsConfig(),
    on_step: Optional[Callable[[int, int, float], None]] = None,
    text: Optional[Tensor] = None,
) -> Tuple[MinkUNet, List[float]]:
    """Trains the U-Net for ``config.epochs`` passes over the scenes (batches of
    ``scenes_per_batch``) and keeps the last step. Returns the network and each step's loss.
    The class term (``config.class_weight`` > 0) needs the vocabulary's ``text`` features and
    every scene's ``class_targets``."""
    if not scenes:
        raise ValueError("ESGS needs at least one scene")
    if config.class_weight > 0.0 and (text is None or any(s.class_targets is None for s in scenes)):
        raise ValueError("the class term needs the text features and every scene's class targets")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network = MinkUNet(3, embed_dim, config.architecture, backend=config.backend).to(config.device)
    scenes = [scene.to(config.device) for scene in scenes]
    text = text.to(config.device) if text is not None else None
    optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
    batches_per_epoch = math.ceil(len(scenes) / config.scenes_per_batch)
    total = config.epochs * batches_per_epoch
    history: List[float] = []
    network.train()
    for step in range(total):
        if step % batches_per_epoch == 0:
            order = rng.permutation(len(scenes)).tolist()
        position = (step % batches_per_epoch) * config.scenes_per_batch
        batch = [scenes[i] for i in order[position : position + config.scenes_per_batch]]
        inputs = []
        for scene in batch:
            xyz, colours = scene.xyz, scene.colours
            if config.augment:
                xyz = xyz @ augmentation_matrix(scene.up, rng).T
                colours = jitter_colours(colours, rng)
            inputs.append(network_input(xyz, colours, scene.voxel_size))
        outputs = batch_forward(network, inputs)
        losses = [
            scene_loss(out, voxels, scene, config.class_weight, text)
            for out, (voxels, _), scene in zip(outputs, inputs, batch)
        ]
        loss = torch.stack(losses).mean()
        for group in optimiser.param_groups:
            group["lr"] = poly_learning_rate(config.lr, step, total)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
        if on_step is not None:
            on_step(step, total, history[-1])
    network.eval()
    return network.cpu(), history


@torch.no_grad()
def predict_embeddings(
    network: MinkUNet,
    xyz: np.ndarray,
    colours: np.ndarray,
    voxel_size: float,
    up: np.ndarray,
    repeats: int = 1,
    seed: int = 0,
    on_pass: Optional[Callable[[], None]] = None,
) -> Tensor:
    """Per-point unit embeddings (on the CPU) from the points alone, computed on the network's
    device; with ``repeats`` > 1, the first pass is the points as given and the others augmented
    (test-time augmentation), and the unit embeddings are summed (their dot products with text
    are the summed cosine logits)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    network.eval()
    rng = np.random.default_rng(seed)
    summed: Optional[Tensor] = None
    for repeat in range(repeats):
        points = xyz if repeat == 0 else xyz @ augmentation_matrix(up, rng).T
        voxels, rgb = network_input(points, colours, voxel_size)
        (out,) = batch_forward(network, [(voxels, rgb)])
        unit = F.normalize(out, dim=1, eps=1e-8).cpu()[voxels.point_to_voxel]
        summed = unit if summed is None else summed + unit
        if on_pass is not None:
            on_pass()
    assert summed is not None
    return summed
