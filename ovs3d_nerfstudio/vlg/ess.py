"""Stage 2 of 3DSS-VLG, Embeddings Specialization (ESS): an adapter on the fused features,
trained with cross-entropy to the pseudo labels.

The adapter in its official form (facts from the official code; nothing copied):
``A(x) = 0.95 * W2(W1 x) + 0.05 * x`` with ``W1: d -> d/4`` without bias, ``W2: d/4 -> d`` with
bias, no activation; logits are unnormalised dot products of ``A(x)`` with the frozen text
features. The cross-entropy is class-balanced by default (``EssConfig.class_balance``; 0 gives
the official unweighted loss). The paper's optimisation: Adam, lr 3e-3, weight decay 4e-4, StepLR(20, 0.7), 80
epochs, batches of 16 scenes of 40k random points (the official code uses 24 and 150 epochs).
There is no model selection on ground truth: the last epoch is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..data.labels import IGNORE

ADAPTER_RATIO = 0.95
"""Weight of the adapter branch; the input passes through with 1 - 0.95."""
REDUCTION = 4
"""The bottleneck: ``d -> d/4 -> d``."""


def adapter_forward(
    x: Float[Tensor, "N D"],
    w1: Float[Tensor, "H D"],
    w2: Float[Tensor, "D H"],
    b2: Float[Tensor, "D"],
    ratio: float = ADAPTER_RATIO,
) -> Float[Tensor, "N D"]:
    """``ratio * W2(W1 x) + (1 - ratio) * x``: the official adapter as one function."""
    return ratio * ((x @ w1.T) @ w2.T + b2) + (1.0 - ratio) * x


def adapter_logits(adapted: Float[Tensor, "N D"], text: Float[Tensor, "C D"]) -> Float[Tensor, "N C"]:
    """Unnormalised dot products with the frozen (unit) text features."""
    return adapted @ text.T


def ess_loss(
    logits: Float[Tensor, "N C"], pseudo: Int[Tensor, "N"], class_weights: Optional[Float[Tensor, "C"]] = None
) -> Tensor:
    """Cross-entropy to the pseudo labels, optionally class-weighted (the weighted mean over
    points); unlabelled points (``IGNORE``) are left out. A batch without any labelled point, or
    whose labelled points all weigh 0, gives 0 (with a gradient), not NaN."""
    labelled = pseudo != IGNORE
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    if class_weights is not None and not bool(class_weights[pseudo[labelled]].any()):
        return logits.sum() * 0.0  # every labelled point weighs 0: the weighted mean would be 0/0
    return F.cross_entropy(logits[labelled], pseudo[labelled], weight=class_weights)


def balancing_weights(pseudo: Int[Tensor, "N"], num_classes: int, power: float) -> Float[Tensor, "C"]:
    """Per-class cross-entropy weights ``(1 / frequency) ** power`` from the pseudo labels,
    scaled to a mean of 1 over the classes that occur (absent classes get 0: no point carries
    them). ``power`` 0 is the unweighted loss, 1 gives every class the same total weight."""
    counts = torch.bincount(pseudo[pseudo != IGNORE], minlength=num_classes)[:num_classes].double()
    present = counts > 0
    if not bool(present.any()):
        raise ValueError("no labelled point: the pseudo labels are all unlabelled")
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = (counts[present].sum() / counts[present]) ** power
    return (weights / weights[present].mean()).float()


class Adapter(nn.Module):
    """The ESS adapter; the text features it scores against are a frozen buffer."""

    def __init__(self, text_features: Tensor) -> None:
        super().__init__()
        dim = text_features.shape[1]
        if dim < REDUCTION:
            raise ValueError(f"the embedding has {dim} dimensions; the adapter needs at least {REDUCTION}")
        self.w1 = nn.Linear(dim, dim // REDUCTION, bias=False)
        self.w2 = nn.Linear(dim // REDUCTION, dim)
        self.register_buffer("text", F.normalize(text_features.float(), dim=-1))

    def forward(self, x: Tensor) -> Tensor:
        return adapter_forward(x, self.w1.weight, self.w2.weight, self.w2.bias)

    def logits(self, x: Tensor) -> Tensor:
        return adapter_logits(self(x), self.text)


@dataclass
class EssConfig:
    """The paper's settings (defaults) for training the adapter."""

    epochs: int = 80
    lr: float = 3e-3
    weight_decay: float = 4e-4
    step_size: int = 20
    """StepLR period in epochs."""
    gamma: float = 0.7
    scenes_per_batch: int = 16
    points_per_scene: int = 40_000
    batches_per_epoch: Optional[int] = None
    """None: one pass over the scenes, ceil(scenes / scenes_per_batch) batches, as in the paper,
    where ScanNet's 1,201 training scenes give 76 batches of 16 (6,080 steps in 80 epochs). With
    few scenes that is few steps (80 for up to 16 scenes), too few for the adapter to fit
    (docs/vlg.md); a number draws that many batches per epoch, cycling through shuffled scenes."""
    class_balance: float = 0.5
    """Exponent of the inverse pseudo-label frequency that weights the cross-entropy; 0 is the
    paper's and the official unweighted loss. Beyond both: the bottleneck adapter cannot fit every
    class, and an unweighted loss spends it on the classes with most points, while mIoU counts
    every class once. 0.5 was chosen over 1 by the fit to the training scenes' own pseudo labels,
    without ground truth (docs/vlg.md)."""
    seed: int = 0

    def check(self) -> None:
        """Raises ``ValueError`` naming the first setting that cannot train an adapter."""
        whole = {
            "epochs": self.epochs,
            "step_size": self.step_size,
            "scenes_per_batch": self.scenes_per_batch,
            "points_per_scene": self.points_per_scene,
            "batches_per_epoch": 1 if self.batches_per_epoch is None else self.batches_per_epoch,
        }
        for name, value in whole.items():
            if value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1; got {value}")
        if self.class_balance < 0:
            raise ValueError(f"class-balance must be >= 0 (0: the official unweighted loss); got {self.class_balance}")


@dataclass
class EssScene:
    """What the adapter trains on: one scene's fused features and pseudo labels, covered points only."""

    fused: Tensor
    pseudo: Tensor

    @classmethod
    def covered(cls, fused: Tensor, pseudo: Tensor, coverage: Tensor) -> "EssScene":
        return cls(fused=fused[coverage > 0], pseudo=pseudo[coverage > 0])


def epoch_batches(
    num_scenes: int, scenes_per_batch: int, batches: Optional[int], generator: torch.Generator
) -> List[List[int]]:
    """Scene indices of each batch of one epoch: one pass over the shuffled scenes (the
    paper's epoch) when ``batches`` is None, else ``batches`` batches of distinct random scenes."""
    if batches is None:
        order = torch.randperm(num_scenes, generator=generator).tolist()
        return [order[start : start + scenes_per_batch] for start in range(0, num_scenes, scenes_per_batch)]
    if batches < 1:
        raise ValueError(f"batches per epoch must be >= 1; got {batches}")
    size = min(scenes_per_batch, num_scenes)
    return [torch.randperm(num_scenes, generator=generator)[:size].tolist() for _ in range(batches)]


def train_adapter(
    scenes: Sequence[EssScene],
    text_features: Tensor,
    config: EssConfig = EssConfig(),
    on_epoch: Optional[Callable[[int, float], None]] = None,
) -> Tuple[Adapter, List[float]]:
    """Trains the adapter for ``config.epochs`` and keeps the last epoch. Returns the adapter
    and the mean loss of each epoch."""
    if not scenes:
        raise ValueError("ESS needs at least one scene")
    config.check()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    adapter = Adapter(text_features)
    weights = None
    if config.class_balance:
        weights = balancing_weights(torch.cat([scene.pseudo for scene in scenes]), len(text_features), config.class_balance)
    optimiser = torch.optim.Adam(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=config.step_size, gamma=config.gamma)
    history: List[float] = []
    for epoch in range(config.epochs):
        losses = []
        for batch in epoch_batches(len(scenes), config.scenes_per_batch, config.batches_per_epoch, generator):
            features, labels = [], []
            for index in batch:
                scene = scenes[index]
                count = min(config.points_per_scene, len(scene.pseudo))
                pick = torch.randperm(len(scene.pseudo), generator=generator)[:count]
                features.append(scene.fused[pick].float())
                labels.append(scene.pseudo[pick])
            loss = ess_loss(adapter.logits(torch.cat(features)), torch.cat(labels), weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scheduler.step()
        history.append(sum(losses) / len(losses))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    adapter.eval()
    return adapter, history
