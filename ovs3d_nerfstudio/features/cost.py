"""What Alg. 1 will cost, said before the user waits for it.

Alg. 1 is one CLIP forward pass per window: about 3,400 crops per 504x378 view, so a scene of
25 views is ~85,000 ViT-B/16 passes. On a GPU that is minutes; on a 2-core CPU (~0.16 s per
crop, docs/benchmarks.md) it is hours. :class:`ExtractionCost` counts the crops up front,
times the first batch, prints the estimated total, and on a CPU says plainly when a GPU is
advised.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

GPU_ADVICE_SECONDS = 300.0
"""On a CPU, an estimate above this (5 minutes) comes with the advice to use a GPU."""


def estimate_seconds(first_batch_seconds: float, first_batch_crops: int, total_crops: int) -> float:
    """Total time if every crop costs what the first batch's did (per crop, linear in the count)."""
    if first_batch_crops < 1:
        raise ValueError(f"the first batch must hold at least one crop, got {first_batch_crops}")
    return first_batch_seconds * total_crops / first_batch_crops


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 46 min``: rounded to what a wait needs."""
    if seconds < 60:
        return f"{max(seconds, 0.0):.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class ExtractionCost:
    """Reports Alg. 1's size before it starts and its estimated time after the first batch.

    Call :meth:`announce` before the first crop is encoded and :meth:`on_batch` after every
    encoder call (``extract_pyramid``'s ``on_batch``).
    """

    def __init__(
        self,
        total_crops: int,
        device: str,
        echo: Callable[[str], None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total_crops = total_crops
        self.on_cpu = not str(device).startswith("cuda")
        self.echo = echo
        self.clock = clock
        self.encoded = 0
        self.estimate: Optional[float] = None
        self._started: Optional[float] = None

    def announce(self, views: int, cached_views: int, crops_per_view: int, batch_size: int, device: str) -> None:
        self.echo(
            f"ovs3d: Alg. 1 pixel CLIP features: {views} views to compute ({cached_views} found in the cache), "
            f"{self.total_crops:,} CLIP crops ({crops_per_view:,} per view), batches of {batch_size} on {device}."
        )
        self._started = self.clock()

    def on_batch(self, crops: int) -> None:
        self.encoded += crops
        if self.estimate is not None or self._started is None:
            return
        elapsed = self.clock() - self._started
        self.estimate = estimate_seconds(elapsed, crops, self.total_crops)
        self.echo(
            f"ovs3d: the first batch of {crops} crops took {elapsed:.1f} s: about {format_duration(self.estimate)} "
            f"for all {self.total_crops:,} crops ({crops / max(elapsed, 1e-9):.1f} crops/s)."
        )
        if self.on_cpu and self.estimate > GPU_ADVICE_SECONDS:
            self.echo(
                "ovs3d: a GPU is advised: Alg. 1 runs one CLIP forward pass per crop, which is slow on a CPU. "
                "The features are cached by image content (--pipeline.datamanager.cache-dir), so they can be "
                "computed once on a GPU machine and the cache folder copied here."
            )
