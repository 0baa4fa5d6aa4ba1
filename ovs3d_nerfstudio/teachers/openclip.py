"""The built-in CLIP teacher: any open_clip architecture, with weights found offline.

open_clip downloads weights on demand and, without network, retries the hub for a long
time before failing. Training machines are often offline, so this teacher never asks
open_clip to download: it resolves the weights to a local file first (an explicit path,
or a file already in the Hugging Face or open_clip caches) and fails at once, with both
remedies in the message, when there is none.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from jaxtyping import Float
from torch import Tensor

from ovs3d_nerfstudio.teachers.base import TeacherError
from ovs3d_nerfstudio.teachers.weights import RANDOM_WEIGHTS, seeded_initialisation, weights_file

_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""Files open_clip fetches for an ``org/repo/`` hub entry, in its order of preference; a
named ``.bin``/``.pth`` file is likewise preferred as ``.safetensors``."""

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
"""Pretrained-config entries that describe how the weights expect images to be prepared."""


def register_model_config(path: Path) -> str:
    """Registers an open_clip architecture JSON and returns the model name it is known by.

    open_clip names an architecture after its file stem and silently ignores files that
    are missing or malformed, so this checks them first.
    """
    if not path.is_file():
        raise TeacherError(f"open_clip model config '{path}' does not exist.")
    try:
        architecture = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TeacherError(f"open_clip model config '{path}' is not valid JSON: {error}") from error
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in architecture]
    if missing:
        raise TeacherError(f"open_clip model config '{path}' lacks the keys {missing}.")
    if open_clip.get_model_config(path.stem) != architecture:
        open_clip.add_model_config(path)
    return path.stem


def _missing_weights_message(model_name: str, tag: str, looked_in: List[str]) -> str:
    places = "\n".join(f"  - {place}" for place in looked_in)
    return (
        f"No local weights for open_clip model '{model_name}' (pretrained '{tag}'); "
        f"this teacher never downloads. Looked in:\n{places}\n"
        "Provide the weights in one of two ways:\n"
        "  1. point to a checkpoint file: --pipeline.datamanager.clip.weights-path /path/to/file\n"
        "  2. fill the cache once on a machine with internet, then copy the cache directory "
        "(~/.cache/huggingface and ~/.cache/clip) here:\n"
        f"     python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{tag}')\"\n"
        f"(For tests only: --pipeline.datamanager.clip.pretrained {RANDOM_WEIGHTS} uses untrained weights.)"
    )


def find_cached_weights(model_name: str, tag: str) -> Path:
    """Returns the cached checkpoint open_clip would use for ``model_name``/``tag``.

    Looks only where open_clip's own download would have put the file (the Hugging Face
    hub cache, then open_clip's URL cache) and never touches the network.
    """
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    looked_in: List[str] = []
    if pretrained_cfg.get("file"):
        local_file = Path(pretrained_cfg["file"])
        if local_file.is_file():
            return local_file
        looked_in.append(str(local_file))
    if pretrained_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(pretrained_cfg["hf_hub"])
        stem, suffix = os.path.splitext(filename)
        if filename in ("", _HF_WEIGHT_NAMES[1]):
            candidates = list(_HF_WEIGHT_NAMES)
        elif suffix in (".bin", ".pth"):
            candidates = [stem + ".safetensors", filename]
        else:
            candidates = [filename]
        for candidate in candidates:
            cached = try_to_load_from_cache(repo_id, candidate)
            if isinstance(cached, str):
                return Path(cached)
        looked_in.append(f"Hugging Face cache: {repo_id} {candidates}")
    if pretrained_cfg.get("url"):
        url_file = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(pretrained_cfg["url"])
        if url_file.is_file():
            return url_file
        looked_in.append(str(url_file))
    raise TeacherError(_missing_weights_message(model_name, tag, looked_in))


class OpenClipTeacher:
    """Frozen open_clip image+text encoder implementing :class:`ClipTeacher`.

    Deliberately not an ``nn.Module``: a teacher stored on a pipeline module must not
    register its parameters, or every training checkpoint would carry a copy of CLIP.

    Args:
        model_name: open_clip architecture name (``open_clip.list_models()``).
        pretrained: open_clip pretrained tag, or ``"random"`` for seeded untrained weights.
        weights_path: explicit checkpoint file; takes precedence over the tag's caches.
        model_config_path: architecture JSON to register first (custom or tiny models).
        batch_size: crops per ``encode_image`` call.
        device: where the model runs.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str = "openai",
        weights_path: Optional[Path] = None,
        model_config_path: Optional[Path] = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise TeacherError(f"CLIP teacher batch_size must be at least 1, got {batch_size}.")
        if model_config_path is not None:
            registered = register_model_config(Path(model_config_path))
            if registered != model_name:
                raise TeacherError(
                    f"open_clip model config '{model_config_path}' registers the architecture "
                    f"'{registered}' (its file stem), but model_name is '{model_name}'."
                )
        architecture = open_clip.get_model_config(model_name)
        if architecture is None:
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5)
            raise TeacherError(
                f"Unknown open_clip model '{model_name}'. Close names: {close or 'none'}; "
                "all names: open_clip.list_models(). "
                "A custom architecture needs --pipeline.datamanager.clip.model-config-path."
            )
        # A custom architecture can change under the same name: its content joins the identity.
        architecture_tag = ""
        if model_config_path is not None:
            digest = hashlib.sha1(json.dumps(architecture, sort_keys=True).encode()).hexdigest()
            architecture_tag = f"@{digest[:8]}"

        pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if weights_path is not None:
            checkpoint, weights_identity = weights_file(weights_path, "CLIP")
            if pretrained_cfg:
                weights_identity += f":as-{pretrained}"
        elif pretrained == RANDOM_WEIGHTS:
            checkpoint = None
            weights_identity = RANDOM_WEIGHTS
        elif not pretrained_cfg:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise TeacherError(
                f"open_clip model '{model_name}' has no pretrained tag '{pretrained}'. "
                f"Known tags: {tags or 'none'}; or give --pipeline.datamanager.clip.weights-path, "
                f"or pretrained '{RANDOM_WEIGHTS}' for tests."
            )
        else:
            checkpoint = find_cached_weights(model_name, pretrained)
            weights_identity = pretrained

        # The tag describes how its weights were trained (normalisation, QuickGELU) even when
        # the file comes from elsewhere; open_clip only applies it when it downloads itself.
        preprocess = {key: pretrained_cfg[key] for key in _PREPROCESS_KEYS if key in pretrained_cfg}
        with seeded_initialisation():
            try:
                self.model = open_clip.create_model(
                    model_name,
                    pretrained=None if checkpoint is None else str(checkpoint),
                    device=device,
                    force_quick_gelu=bool(pretrained_cfg.get("quick_gelu", False)),
                    force_preprocess_cfg=preprocess,
                    pretrained_hf=False,  # Hugging Face text towers: weights come from the checkpoint
                )
            except Exception as error:
                raise TeacherError(
                    f"Could not build open_clip model '{model_name}' from '{checkpoint}': {error}"
                ) from error
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.embed_dim: int = int(architecture["embed_dim"])
        self.identity: str = f"open_clip:{model_name}{architecture_tag}:{weights_identity}"

        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_size: Tuple[int, int] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if cfg["resize_mode"] not in ("shortest", "squash"):
            raise TeacherError(
                f"open_clip resize mode '{cfg['resize_mode']}' of '{model_name}' is not supported by "
                "the built-in teacher (only 'shortest' and 'squash'); bring it as an import-path teacher."
            )
        self.resize_mode: str = cfg["resize_mode"]
        self.interpolation: str = "bilinear" if cfg["interpolation"] == "bilinear" else "bicubic"
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _resized_size(self, height: int, width: int) -> Tuple[int, int]:
        """Size before the centre crop, rounded the way torchvision's ``Resize(int)`` does."""
        target_h, target_w = self.image_size
        if self.resize_mode == "squash":
            return target_h, target_w
        if height * target_w <= width * target_h:
            return target_h, int(target_h * width / height)
        return int(target_w * height / width), target_w

    def preprocess(self, crops: Sequence[Float[Tensor, "3 h w"]]) -> Float[Tensor, "B 3 H W"]:
        """CLIP's eval transform on tensors: resize, centre crop, normalise.

        Crops of equal size are resized together. The resize is antialiased like PIL's and
        clamped to [0, 1], as PIL's 8-bit output is.
        """
        target_h, target_w = self.image_size
        groups: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for index, crop in enumerate(crops):
            if crop.ndim != 3 or crop.shape[0] != 3 or crop.shape[1] < 1 or crop.shape[2] < 1:
                raise ValueError(f"Crop {index} must have shape [3, h, w] with h, w >= 1, got {tuple(crop.shape)}.")
            groups[(int(crop.shape[1]), int(crop.shape[2]))].append(index)
        out = torch.empty((len(crops), 3, target_h, target_w), dtype=torch.float32, device=self.device)
        for (height, width), indices in groups.items():
            batch = torch.stack([crops[i] for i in indices]).to(self.device, torch.float32)
            resized_h, resized_w = self._resized_size(height, width)
            if (resized_h, resized_w) != (height, width):
                batch = F.interpolate(
                    batch, size=(resized_h, resized_w), mode=self.interpolation, align_corners=False, antialias=True
                ).clamp_(0.0, 1.0)
            top = int(round((resized_h - target_h) / 2.0))
            left = int(round((resized_w - target_w) / 2.0))
            out[indices] = batch[:, :, top : top + target_h, left : left + target_w]
        return (out - self.mean) / self.std

    @torch.no_grad()
    def encode_crops(self, crops: Sequence[Float[Tensor, "3 h w"]]) -> Float[Tensor, "B D"]:
        """Embeds RGB crops in [0, 1] of any sizes; returns float32 on the teacher's device.

        On CUDA the image encoder runs under fp16 autocast (matrix products in half precision,
        normalisations in float32): the embeddings differ from float32 ones by about the fp16
        rounding the feature cache applies to them anyway, so the teacher's identity (and the
        cache key) does not depend on the device.
        """
        if len(crops) == 0:
            return torch.empty((0, self.embed_dim), device=self.device)
        embeddings = []
        for start in range(0, len(crops), self.batch_size):
            images = self.preprocess(crops[start : start + self.batch_size])
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
                embeddings.append(self.model.encode_image(images).float())
        return torch.cat(embeddings)

    @torch.no_grad()
    def encode_text(self, texts: List[str]) -> Float[Tensor, "C D"]:
        """Embeds label strings with the model's own tokenizer; float32 on the teacher's device."""
        if len(texts) == 0:
            return torch.empty((0, self.embed_dim), device=self.device)
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens).float()
