"""The two teacher interfaces and the ``package.module:factory`` loader.

3D-OVS distils two frozen 2D models into the field:

* a CLIP-like *image+text* encoder, which embeds image crops and label strings into one
  space (Alg. 1, Eq. 4);
* a DINO-like *dense* encoder, which turns an image into a grid of tokens whose cosine
  correlations mark object boundaries (Eq. 9).

Anything that implements these protocols can be plugged in, either as a built-in name or
as an import path ``package.module:factory`` whose factory takes no argument and returns
the teacher. No edit to this package is needed to bring another model.
"""

from __future__ import annotations

import importlib
from typing import Callable, List, Protocol, Sequence, runtime_checkable

from jaxtyping import Float
from torch import Tensor

from ovs3d_nerfstudio.errors import UserFacingError


class TeacherError(UserFacingError, RuntimeError):
    """A teacher could not be built; the message says why and how to fix it."""


@runtime_checkable
class ClipTeacher(Protocol):
    """An image+text encoder with CLIP's contract.

    ``identity`` names the model *and* its weights (e.g. ``open_clip:ViT-B-16:openai``); it
    is part of the feature-cache key, so two teachers that can give different embeddings
    must never share it.
    """

    identity: str
    embed_dim: int

    def encode_crops(self, crops: Sequence[Float[Tensor, "3 h w"]]) -> Float[Tensor, "B D"]:
        """Embeds a batch of RGB crops of any sizes, values in [0, 1].

        The teacher applies its own preprocessing (CLIP: resize the short side to 224,
        centre-crop, normalise). Returns one unnormalised embedding per crop.
        """
        ...

    def encode_text(self, texts: List[str]) -> Float[Tensor, "C D"]:
        """Embeds label strings; one unnormalised embedding per string."""
        ...


@runtime_checkable
class DenseTeacher(Protocol):
    """A dense self-supervised encoder with DINO's contract: one token per stride x stride cell."""

    identity: str
    feature_dim: int
    stride: int

    def encode_dense(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B h w C"]:
        """Encodes images in [0, 1] whose sides are multiples of ``stride``.

        Returns tokens on the grid ``h = H // stride``, ``w = W // stride``.
        """
        ...


def load_factory(import_path: str) -> Callable[[], object]:
    """Resolves ``package.module:factory`` to a callable, with one clear error if it cannot."""
    module_name, sep, attribute = import_path.partition(":")
    if not sep or not module_name or not attribute:
        raise TeacherError(
            f"Teacher source '{import_path}' is neither a built-in name nor an import path. "
            "Give a built-in name or 'package.module:factory' (a callable with no arguments "
            "that returns the teacher)."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TeacherError(
            f"Cannot import module '{module_name}' for teacher '{import_path}': {error}. "
            "Check the spelling and that the module is importable (installed, or on PYTHONPATH)."
        ) from error
    factory = module
    for name in attribute.split("."):
        if not hasattr(factory, name):
            raise TeacherError(
                f"Module '{module_name}' has no attribute '{attribute}' (teacher '{import_path}'). "
                "Name a callable defined in that module."
            )
        factory = getattr(factory, name)
    if not callable(factory):
        raise TeacherError(f"Teacher factory '{import_path}' is not callable.")
    return factory


def build_from_import_path(import_path: str, protocol: type) -> object:
    """Calls the factory at ``import_path`` and checks the result implements ``protocol``."""
    teacher = load_factory(import_path)()
    if not isinstance(teacher, protocol):
        raise TeacherError(
            f"Teacher factory '{import_path}' returned {type(teacher).__name__}, which does not "
            f"implement {protocol.__name__} (see ovs3d_nerfstudio/teachers/base.py)."
        )
    return teacher
