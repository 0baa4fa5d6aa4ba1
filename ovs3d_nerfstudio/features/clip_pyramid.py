"""Multi-scale pixel-level CLIP features (Alg. 1 of 3D-OVS) as a compact *window store*.

Alg. 1 slides jittered windows over the image at N_s scales, encodes every crop with CLIP and
gives each pixel the mean embedding of the windows that cover it. Stored densely that is
N_s x D x H x W per image (fp16 at 504x378: ~585 MB). But every pixel value is a function of
the windows alone, so we store exactly the windows — boxes and crop embeddings, a few MB per
image — and rebuild pixel features on demand:

    F_s(y, x) = sum of embeddings of scale-s windows covering (y, x) / number of such windows

which is Alg. 1's accumulate-then-divide, term for term.

* :func:`extract_pyramid` computes the store for one image, encoding crops in batches.
* :func:`extract_pyramid_sequential` is the literal Alg. 1 (dense, one encoder call per crop):
  the reference for tests and for benchmarking the batched path.
* :class:`ClipFeatureStore` holds the windows of all training views and answers per-ray
  queries (:meth:`ClipFeatureStore.gather`) without ever densifying an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ovs3d_nerfstudio.errors import ConfigError
from ovs3d_nerfstudio.teachers.base import ClipTeacher

BatchCallback = Callable[[int], None]
"""Called after each encoder call with the number of crops it encoded (progress, cost estimates)."""


@dataclass
class PyramidConfig:
    """Window geometry of Alg. 1. Every field changes the features, so all belong in the cache key."""

    patch_fractions: Tuple[float, ...] = (1 / 5, 1 / 7, 1 / 10)
    """Window side of each scale as a fraction of the image's short side (paper: s/5, s/7, s/10).
    The single-scale ablation (Table 2, < 1 mIoU lost) uses (1/7,)."""
    seed: int = 0
    """Seed of the random window enlargement, so that re-extraction gives identical features."""

    def __post_init__(self) -> None:
        # Runs while the command line is parsed, so a bad value stops before anything starts.
        flag = "--pipeline.datamanager.pyramid.patch-fractions"
        if not self.patch_fractions:
            raise ConfigError(f"{flag} needs at least one window side (the paper: 0.2 0.142857 0.1).")
        for fraction in self.patch_fractions:
            if not 0.0 < fraction <= 1.0:
                raise ConfigError(
                    f"{flag}: {fraction} is outside (0, 1]; each entry is a window side as a fraction of the "
                    "short image side (the paper: 0.2 0.142857 0.1)."
                )


def cache_settings(config: PyramidConfig) -> Dict[str, object]:
    """The extraction settings in a feature-cache key: every reader of the cache (``ns-train
    ovs3d``, the point-cloud path) builds its keys with this, so they share entries."""
    return {"pyramid": list(config.patch_fractions), "seed": config.seed}


def patch_geometry(height: int, width: int, fraction: float) -> Tuple[int, int]:
    """Window side ``p = round(fraction * min(H, W))`` and stride ``p // 4`` (both at least 1)."""
    patch_size = max(1, round(fraction * min(height, width)))
    return patch_size, max(1, patch_size // 4)


def _axis_layout(length: int, patch_size: int, stride: int) -> Tuple[int, bool]:
    """Number of regular window starts along an axis, and whether an extra edge start is needed."""
    num_regular = (length - patch_size) // stride + 1
    return num_regular, (num_regular - 1) * stride + patch_size < length


def _axis_starts(length: int, patch_size: int, stride: int) -> Tensor:
    num_regular, has_extra = _axis_layout(length, patch_size, stride)
    starts = torch.arange(num_regular) * stride
    if has_extra:
        starts = torch.cat([starts, torch.tensor([length - patch_size])])
    return starts


def window_boxes(
    height: int, width: int, patch_size: int, stride: int, generator: torch.Generator
) -> Int[Tensor, "gy gx 4"]:
    """Jittered sliding windows of one scale, as end-exclusive boxes ``(x0, y0, x1, y1)``.

    As in Alg. 1, windows start at multiples of ``stride`` along each axis and every side is
    pushed out by an independent ``randint(0, stride)`` (both ends included, like Python's
    ``random.randint``), then clipped to the image. The jitter breaks the checkerboard
    pattern a regular grid would imprint on the features.

    Deviation from Alg. 1 as printed: when the last regular start leaves the last rows or
    columns uncovered (``(H - p) % stride != 0``), one more start flush with the edge
    (``H - p``) is added. Without it those pixels may get no window at all and Alg. 1's
    final division is 0 / 0.

    The four draws of each window are taken from ``generator`` in the order (left, upper,
    right, lower), grid row by grid row.
    """
    if patch_size > min(height, width):
        raise ValueError(f"Window side {patch_size} exceeds the image ({height}x{width}).")
    starts_y = _axis_starts(height, patch_size, stride)
    starts_x = _axis_starts(width, patch_size, stride)
    grid_y, grid_x = torch.meshgrid(starts_y, starts_x, indexing="ij")
    jitter = torch.randint(0, stride + 1, (len(starts_y), len(starts_x), 4), generator=generator)
    x0 = (grid_x - jitter[..., 0]).clamp(min=0)
    y0 = (grid_y - jitter[..., 1]).clamp(min=0)
    x1 = (grid_x + patch_size + jitter[..., 2]).clamp(max=width)
    y1 = (grid_y + patch_size + jitter[..., 3]).clamp(max=height)
    return torch.stack([x0, y0, x1, y1], dim=-1).to(torch.int32)


def count_windows(height: int, width: int, config: PyramidConfig) -> int:
    """Number of Alg. 1 windows (one CLIP crop each) of an image, without drawing them."""
    total = 0
    for fraction in config.patch_fractions:
        patch_size, stride = patch_geometry(height, width, fraction)
        rows, extra_row = _axis_layout(height, patch_size, stride)
        columns, extra_column = _axis_layout(width, patch_size, stride)
        total += (rows + extra_row) * (columns + extra_column)
    return total


def _pyramid_windows(height: int, width: int, config: PyramidConfig) -> List[Tuple[int, int, Tensor]]:
    """(patch_size, stride, boxes) per scale; one generator for all scales, seeded from the config."""
    generator = torch.Generator().manual_seed(config.seed)
    windows = []
    for fraction in config.patch_fractions:
        patch_size, stride = patch_geometry(height, width, fraction)
        windows.append((patch_size, stride, window_boxes(height, width, patch_size, stride, generator)))
    return windows


@torch.no_grad()
def average_windows(
    boxes: Int[Tensor, "N 4"],
    embeddings: Float[Tensor, "N D"],
    height: int,
    width: int,
    chunk_dims: int = 64,
) -> Float[Tensor, "H W D"]:
    """Per-pixel mean of the embeddings of the windows covering each pixel (float32).

    A 2D difference array makes this O(N + H W) per channel instead of O(sum of window
    areas): each window adds its embedding at (y0, x0) and (y1, x1), subtracts it at
    (y0, x1) and (y1, x0), and two cumulative sums recover the per-pixel sums. Sums are
    taken in float64 (no cancellation error) and channels are processed ``chunk_dims`` at a
    time to bound memory.
    """
    device = embeddings.device
    num, dim = embeddings.shape
    x0, y0, x1, y1 = boxes.to(device=device, dtype=torch.long).unbind(-1)
    row = width + 1
    corners = torch.cat([y0 * row + x0, y0 * row + x1, y1 * row + x0, y1 * row + x1])
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64, device=device).repeat_interleave(num)
    buffer = torch.empty((height + 1) * row, min(chunk_dims, dim), dtype=torch.float64, device=device)

    def integrate(values: Tensor) -> Tensor:
        diff = buffer[:, : values.shape[1]].zero_()
        diff.index_put_((corners,), values.to(torch.float64).repeat(4, 1) * signs[:, None], accumulate=True)
        return diff.view(height + 1, row, -1).cumsum_(0).cumsum_(1)[:height, :width]

    # Casting the exact sums to float32 before dividing rounds once, like Alg. 1 in float32.
    count = integrate(torch.ones(num, 1, device=device)).to(torch.float32)
    dense = torch.empty(height, width, dim, dtype=torch.float32, device=device)
    for start in range(0, dim, chunk_dims):
        end = min(start + chunk_dims, dim)
        dense[..., start:end] = integrate(embeddings[:, start:end])
    return dense.div_(count)


@dataclass
class PixelClipPyramid:
    """Alg. 1's output for one image, stored as windows: boxes plus crop embeddings per scale."""

    height: int
    width: int
    patch_sizes: List[int]
    strides: List[int]
    boxes: List[Int[Tensor, "gy gx 4"]]
    """Per scale, end-exclusive (x0, y0, x1, y1) boxes, int32."""
    embeddings: List[Float[Tensor, "gy gx D"]]
    """Per scale, one unnormalised crop embedding per window (float16 in storage)."""

    @property
    def num_scales(self) -> int:
        return len(self.boxes)

    @property
    def embed_dim(self) -> int:
        return self.embeddings[0].shape[-1]

    def dense(self, scale_index: int) -> Float[Tensor, "H W D"]:
        """The pixel features of one scale, exactly as Alg. 1 computes them (float32)."""
        return average_windows(
            self.boxes[scale_index].reshape(-1, 4),
            self.embeddings[scale_index].reshape(-1, self.embed_dim),
            self.height,
            self.width,
        )

    def to_tensors(self) -> Dict[str, Tensor]:
        """Flat name -> tensor mapping for the feature cache."""
        tensors = {
            "image_size": torch.tensor([self.height, self.width], dtype=torch.int64),
            "patch_sizes": torch.tensor(self.patch_sizes, dtype=torch.int64),
            "strides": torch.tensor(self.strides, dtype=torch.int64),
        }
        for index, (boxes, embeddings) in enumerate(zip(self.boxes, self.embeddings)):
            tensors[f"boxes_{index}"] = boxes
            tensors[f"embeddings_{index}"] = embeddings
        return tensors

    @classmethod
    def from_tensors(cls, tensors: Dict[str, Tensor]) -> "PixelClipPyramid":
        """Inverse of :meth:`to_tensors`; raises ``KeyError``/``ValueError`` on inconsistent input."""
        height, width = (int(v) for v in tensors["image_size"].tolist())
        patch_sizes = [int(v) for v in tensors["patch_sizes"].tolist()]
        strides = [int(v) for v in tensors["strides"].tolist()]
        boxes = [tensors[f"boxes_{i}"] for i in range(len(patch_sizes))]
        embeddings = [tensors[f"embeddings_{i}"] for i in range(len(patch_sizes))]
        for box, embedding in zip(boxes, embeddings):
            if box.shape[-1] != 4 or box.shape[:2] != embedding.shape[:2]:
                raise ValueError("Window boxes and embeddings do not match.")
        return cls(height, width, patch_sizes, strides, boxes, embeddings)


@torch.no_grad()
def extract_pyramid(
    image: Float[Tensor, "3 H W"],
    teacher: ClipTeacher,
    config: PyramidConfig,
    batch_size: int = 64,
    on_batch: Optional[BatchCallback] = None,
) -> PixelClipPyramid:
    """Alg. 1 for one image, batched: ``ceil(#windows / batch_size)`` encoder calls in all.

    The windows of all scales are drawn first (same generator use as the sequential
    reference, hence the same windows), then their crops go to ``teacher.encode_crops``
    ``batch_size`` at a time. Embeddings are kept as float16 on the CPU, ready for the cache.
    """
    _, height, width = image.shape
    windows = _pyramid_windows(height, width, config)
    all_boxes = torch.cat([boxes.reshape(-1, 4) for _, _, boxes in windows]).tolist()
    encoded = []
    for offset in range(0, len(all_boxes), batch_size):
        crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in all_boxes[offset : offset + batch_size]]
        encoded.append(teacher.encode_crops(crops).to("cpu", torch.float16))
        if on_batch is not None:
            on_batch(len(crops))
    flat = torch.cat(encoded)
    sizes = [boxes.shape[0] * boxes.shape[1] for _, _, boxes in windows]
    embeddings = [
        chunk.reshape(*boxes.shape[:2], -1) for chunk, (_, _, boxes) in zip(flat.split(sizes), windows)
    ]
    return PixelClipPyramid(
        height=height,
        width=width,
        patch_sizes=[patch_size for patch_size, _, _ in windows],
        strides=[stride for _, stride, _ in windows],
        boxes=[boxes for _, _, boxes in windows],
        embeddings=embeddings,
    )


@torch.no_grad()
def extract_pyramid_sequential(
    image: Float[Tensor, "3 H W"], teacher: ClipTeacher, config: PyramidConfig
) -> Float[Tensor, "Ns D H W"]:
    """Alg. 1 transcribed literally: dense float32 accumulation, one encoder call per crop.

    Kept as the executable reference for :func:`extract_pyramid` (tests, benchmark). It draws
    the same windows from the same seed; only the storage and the batching differ.
    """
    _, height, width = image.shape
    features = torch.zeros(len(config.patch_fractions), teacher.embed_dim, height, width)
    for scale_index, (_, _, boxes) in enumerate(_pyramid_windows(height, width, config)):
        count = torch.zeros(1, height, width)
        multi_spatial = torch.zeros(teacher.embed_dim, height, width)
        for left, upper, right, lower in boxes.reshape(-1, 4).tolist():
            patch_feature = teacher.encode_crops([image[:, upper:lower, left:right]])[0].float().cpu()
            multi_spatial[:, upper:lower, left:right] += patch_feature[:, None, None]
            count[:, upper:lower, left:right] += 1
        features[scale_index] = multi_spatial / count
    return features


class ClipFeatureStore:
    """The window stores of all training views of a scene, queried per ray.

    Views share one image size, so every scale has the same window grid in every view and the
    windows stack into ``boxes[s]: [V, gy, gx, 4]`` and ``embeddings[s]: [V, gy, gx, D]``.
    """

    def __init__(
        self,
        height: int,
        width: int,
        patch_sizes: Sequence[int],
        strides: Sequence[int],
        boxes: Sequence[Int[Tensor, "V gy gx 4"]],
        embeddings: Sequence[Float[Tensor, "V gy gx D"]],
    ) -> None:
        self.height = height
        self.width = width
        self.patch_sizes = list(patch_sizes)
        self.strides = list(strides)
        self.boxes = [b.to(torch.int32) for b in boxes]
        # Each scale's embeddings live in a flat table with one extra all-zero row, which
        # ``gather`` indexes for candidate windows that do not cover the ray.
        self._tables = []
        for scale, embedding in enumerate(embeddings):
            if embedding.shape[:3] != self.boxes[scale].shape[:3]:
                raise ValueError(
                    f"Scale {scale}: boxes {tuple(self.boxes[scale].shape)} and embeddings "
                    f"{tuple(embedding.shape)} do not match."
                )
            flat = embedding.reshape(-1, embedding.shape[-1])
            self._tables.append(torch.cat([flat, flat.new_zeros(1, flat.shape[1])]))

    @classmethod
    def from_pyramids(cls, pyramids: Sequence[PixelClipPyramid]) -> "ClipFeatureStore":
        """Stacks per-view pyramids; they must share image size and window geometry."""
        first = pyramids[0]
        for index, pyramid in enumerate(pyramids):
            if (pyramid.height, pyramid.width, pyramid.patch_sizes, pyramid.strides) != (
                first.height, first.width, first.patch_sizes, first.strides
            ):
                raise ValueError(
                    f"View {index} has image size {pyramid.height}x{pyramid.width} and windows "
                    f"{pyramid.patch_sizes}/{pyramid.strides}; view 0 has {first.height}x{first.width} "
                    f"and {first.patch_sizes}/{first.strides}. All views need the same size and settings."
                )
        return cls(
            first.height,
            first.width,
            first.patch_sizes,
            first.strides,
            [torch.stack([p.boxes[s] for p in pyramids]) for s in range(first.num_scales)],
            [torch.stack([p.embeddings[s] for p in pyramids]) for s in range(first.num_scales)],
        )

    @property
    def embeddings(self) -> List[Float[Tensor, "V gy gx D"]]:
        return [table[:-1].view(*boxes.shape[:3], -1) for table, boxes in zip(self._tables, self.boxes)]

    @property
    def num_views(self) -> int:
        return self.boxes[0].shape[0]

    @property
    def num_scales(self) -> int:
        return len(self.boxes)

    @property
    def embed_dim(self) -> int:
        return self._tables[0].shape[1]

    @property
    def device(self) -> torch.device:
        return self._tables[0].device

    def nbytes(self) -> int:
        """Memory held by boxes and embeddings."""
        return sum(t.nbytes for t in self.boxes) + sum(t.nbytes for t in self._tables)

    def to(self, device: Union[str, torch.device]) -> "ClipFeatureStore":
        """Moves the store in place (e.g. to the GPU that samples rays) and returns it."""
        self.boxes = [b.to(device) for b in self.boxes]
        self._tables = [t.to(device) for t in self._tables]
        return self

    @torch.no_grad()
    def dense(self, view: int, scale: int) -> Float[Tensor, "H W D"]:
        """Whole-image features of one view and scale (float32), e.g. for relevancy maps."""
        return average_windows(
            self.boxes[scale][view].reshape(-1, 4),
            self.embeddings[scale][view].reshape(-1, self.embed_dim),
            self.height,
            self.width,
        )

    def _axis_candidates(
        self, coord: Int[Tensor, "R"], length: int, patch_size: int, stride: int
    ) -> Tuple[Int[Tensor, "R K"], Bool[Tensor, "R K"]]:
        """Grid indices along one axis of every window that may cover ``coord``, and their validity.

        A regular window i spans at most [i*stride - stride, i*stride + p + stride), so it can
        cover c only if i*stride lies in (c - p - stride, c + stride]: at most
        ceil((p + 2*stride) / stride) consecutive indices. The extra edge window, if any, is
        always a candidate; its box decides.
        """
        num_regular, has_extra = _axis_layout(length, patch_size, stride)
        span = -(-(patch_size + 2 * stride) // stride)
        first = torch.div(coord - patch_size - stride, stride, rounding_mode="floor") + 1
        index = first[:, None] + torch.arange(span, device=coord.device)
        valid = (index >= 0) & (index < num_regular)
        if has_extra:
            index = torch.cat([index, index.new_full((len(coord), 1), num_regular)], dim=1)
            valid = torch.cat([valid, valid.new_ones(len(coord), 1)], dim=1)
        return index, valid

    @torch.no_grad()
    def gather(
        self,
        view: Int[Tensor, "R"],
        y: Int[Tensor, "R"],
        x: Int[Tensor, "R"],
        chunk_size: int = 1024,
    ) -> Float[Tensor, "R Ns D"]:
        """Per-pixel multi-scale features of a batch of rays from any views (float32).

        Equal to indexing :meth:`dense` but never builds an image: for each ray only the
        small neighbourhood of windows that could cover it is looked up, boxes are tested for
        containment, and covering embeddings are averaged. Rays are processed ``chunk_size``
        at a time; peak memory is about ``chunk_size * K * D * 2`` bytes, K being the most
        windows covering one pixel (up to ~36 at the default strides). Pixel coordinates must be
        inside the image (not checked: this runs every iteration).
        """
        view, y, x = (t.to(self.device, torch.long) for t in (view, y, x))
        out = torch.empty(len(view), self.num_scales, self.embed_dim, dtype=torch.float32, device=self.device)
        for start in range(0, len(view), chunk_size):
            rays = slice(start, start + chunk_size)
            for scale in range(self.num_scales):
                out[rays, scale] = self._gather_scale(scale, view[rays], y[rays], x[rays])
        return out

    def _gather_scale(self, scale: int, view: Tensor, y: Tensor, x: Tensor) -> Tensor:
        patch_size, stride = self.patch_sizes[scale], self.strides[scale]
        grid_y, grid_x = self.boxes[scale].shape[1:3]
        index_y, valid_y = self._axis_candidates(y, self.height, patch_size, stride)
        index_x, valid_x = self._axis_candidates(x, self.width, patch_size, stride)
        flat = (view[:, None, None] * grid_y + index_y[:, :, None]) * grid_x + index_x[:, None, :]
        valid = (valid_y[:, :, None] & valid_x[:, None, :]).flatten(1)
        flat = torch.where(valid, flat.flatten(1), 0)
        box = self.boxes[scale].view(-1, 4)[flat]
        covers = (
            valid
            & (box[..., 0] <= x[:, None])
            & (x[:, None] < box[..., 2])
            & (box[..., 1] <= y[:, None])
            & (y[:, None] < box[..., 3])
        )
        # Covering candidates first, then only as many columns as the most-covered ray needs
        # (typically 25-36 of 49); the rest point at the table's zero row.
        count = covers.sum(dim=1)
        order = torch.sort(covers.to(torch.uint8), dim=1, descending=True, stable=True).indices
        order = order[:, : int(count.max())]
        zero_row = self._tables[scale].shape[0] - 1
        rows = torch.where(covers.gather(1, order), flat.gather(1, order), zero_row)
        table = self._tables[scale]
        summed = table.index_select(0, rows.flatten()).view(*rows.shape, -1).sum(dim=1, dtype=torch.float32)
        return summed / count[:, None].to(torch.float32)
