"""Teacher choices for the command line: a built-in name, or ``package.module:factory``.

The built-in teachers are imported only in ``setup``, so that reading the configs (every
``ns-*`` command does, through the method entry point) does not import open_clip.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ovs3d_nerfstudio.teachers.base import ClipTeacher, DenseTeacher, TeacherError, build_from_import_path

CPU_CROPS_PER_BATCH = 64
"""On a CPU a ViT-B/16 crop is compute-bound at batch size 1 already (docs/benchmarks.md 2.1)."""
CUDA_CROPS_PER_BATCH = 512
"""On a GPU, in fp16: ~2 GB of activations for ViT-B/16, enough crops to keep the device busy."""


def build_teacher(source: str, builtin: str, build_builtin: Callable[[], object], protocol: type, kind: str) -> object:
    """The built-in teacher when ``source`` names it, else the factory at the import path ``source``."""
    if source == builtin:
        return build_builtin()
    if ":" not in source:
        raise TeacherError(
            f"Unknown {kind} teacher '{source}'. Use the built-in '{builtin}', or an import path "
            "'package.module:factory' whose factory takes no arguments and returns the teacher."
        )
    return build_from_import_path(source, protocol)


@dataclass
class ClipTeacherConfig:
    """The image+text teacher that provides the open-vocabulary features (Alg. 1, Eq. 4)."""

    source: str = "open_clip"
    """Built-in teacher name ('open_clip'), or 'package.module:factory' for any other model."""
    model_name: str = "ViT-B-16"
    """open_clip architecture name; the paper uses CLIP ViT-B/16."""
    pretrained: str = "openai"
    """open_clip pretrained tag, read from local caches only; 'random' = untrained weights (tests only)."""
    weights_path: Optional[Path] = None
    """Local checkpoint file; takes precedence over the caches (the tag still sets preprocessing)."""
    model_config_path: Optional[Path] = None
    """open_clip architecture JSON to register, for custom architectures (its file stem is the model name)."""
    batch_size: Optional[int] = None
    """Crops per image-encoder call; None: 512 on CUDA (fp16), 64 on a CPU."""

    def crops_per_batch(self, device: str) -> int:
        """``batch_size``, or the device's default: a GPU needs large batches to be kept busy."""
        if self.batch_size is not None:
            return self.batch_size
        return CUDA_CROPS_PER_BATCH if str(device).startswith("cuda") else CPU_CROPS_PER_BATCH

    def setup(self, device: str = "cpu") -> ClipTeacher:
        """Builds the teacher; raises :class:`TeacherError` with the fix when it cannot."""

        def open_clip_teacher() -> ClipTeacher:
            from ovs3d_nerfstudio.teachers.openclip import OpenClipTeacher

            return OpenClipTeacher(
                model_name=self.model_name,
                pretrained=self.pretrained,
                weights_path=self.weights_path,
                model_config_path=self.model_config_path,
                batch_size=self.crops_per_batch(device),
                device=device,
            )

        return build_teacher(self.source, "open_clip", open_clip_teacher, ClipTeacher, "CLIP")  # type: ignore[return-value]


@dataclass
class DinoTeacherConfig:
    """The dense teacher whose token correlations mark object boundaries (Eq. 9)."""

    source: str = "dino_v1"
    """Built-in teacher name ('dino_v1'), or 'package.module:factory' for any other model."""
    model_name: str = "vit_base_patch8_224_dino"
    """timm 0.6.7 name of a DINO v1 ViT; the default is the paper's dino_vitb8."""
    pretrained: str = "dino"
    """'dino' = official weights from the torch hub cache; 'random' = untrained weights (tests only)."""
    weights_path: Optional[Path] = None
    """Local checkpoint file (a DINO backbone state dict); takes precedence over the cache."""
    depth: Optional[int] = None
    """Override of the number of blocks (tiny test models)."""
    embed_dim: Optional[int] = None
    """Override of the token width (tiny test models)."""
    num_heads: Optional[int] = None
    """Override of the number of attention heads (tiny test models)."""

    def setup(self, device: str = "cpu") -> DenseTeacher:
        """Builds the teacher; raises :class:`TeacherError` with the fix when it cannot."""

        def dino_teacher() -> DenseTeacher:
            from ovs3d_nerfstudio.teachers.dino import DinoTeacher

            return DinoTeacher(
                model_name=self.model_name,
                pretrained=self.pretrained,
                weights_path=self.weights_path,
                depth=self.depth,
                embed_dim=self.embed_dim,
                num_heads=self.num_heads,
                device=device,
            )

        return build_teacher(self.source, "dino_v1", dino_teacher, DenseTeacher, "dense")  # type: ignore[return-value]
