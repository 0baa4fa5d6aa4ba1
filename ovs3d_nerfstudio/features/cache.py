"""Content-keyed on-disk cache for pre-computed teacher features.

Extracting Alg. 1 features costs thousands of CLIP calls per image, so results are cached.
The key is a hash of what determines the result — the exact pixels at feature resolution,
the teacher's identity (model *and* weights) and the extraction settings — never a path or a
folder name, so renaming a scene reuses its features and changing anything that matters
never serves stale ones.

Entries are written atomically (temporary file, fsync, rename), so a crash or a parallel run
cannot leave a half-written entry under a valid name. Each entry stores its key and a
checksum of its tensors; an entry that cannot be read or fails the check is deleted and
recomputed instead of crashing training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import Tensor

FORMAT_VERSION = 1
"""Bump when the meaning or layout of cached tensors changes; old entries then miss."""

_KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_LOGGER = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ovs3d_nerfstudio``, else ``~/.cache/ovs3d_nerfstudio``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ovs3d_nerfstudio"


def _tensor_bytes(tensor: Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _checksum(tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


class FeatureCache:
    """Files ``root/<key[:2]>/<key>.pt`` holding a dict of CPU tensors each."""

    def __init__(self, root: Optional[Path] = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(image: Tensor, teacher_identity: str, settings: Mapping[str, Any]) -> str:
        """sha256 of the image's exact values, shape and dtype, the teacher identity and the settings.

        ``image`` must be the pixels the features are computed from (after any resizing), in
        whatever dtype they are held: the same picture as uint8 and as float gives two keys,
        which is safe. ``settings`` must be JSON-serialisable; key order does not matter.
        """
        digest = hashlib.sha256()
        header = {
            "format": FORMAT_VERSION,
            "shape": list(image.shape),
            "dtype": str(image.dtype),
            "teacher": teacher_identity,
            "settings": settings,
        }
        digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\0")
        digest.update(_tensor_bytes(image))
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        if not _KEY_PATTERN.match(key):
            raise ValueError(f"Not a feature-cache key: {key!r} (expected 64 lowercase hex digits).")
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> Optional[Dict[str, Tensor]]:
        """The cached tensors, or None if absent or damaged (a damaged entry is removed)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            problem = self._validate(payload, key)
        except Exception as error:  # any unreadable file must lead to recomputation, not a crash
            problem = f"unreadable ({type(error).__name__}: {error})"
        if problem is None:
            return payload["tensors"]
        _LOGGER.warning("Feature cache entry %s is %s; removing it and recomputing.", path, problem)
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            _LOGGER.warning("Could not remove %s: %s", path, error)
        return None

    @staticmethod
    def _validate(payload: Any, key: str) -> Optional[str]:
        if not isinstance(payload, dict) or not isinstance(payload.get("tensors"), dict):
            return "not a feature-cache entry"
        if payload.get("format") != FORMAT_VERSION:
            return f"of format {payload.get('format')!r}, not {FORMAT_VERSION}"
        if payload.get("key") != key:
            return "stored under the wrong key"
        if not all(isinstance(t, Tensor) for t in payload["tensors"].values()):
            return "not a mapping of tensors"
        if payload.get("checksum") != _checksum(payload["tensors"]):
            return "corrupt (checksum mismatch)"
        return None

    def save(self, key: str, tensors: Mapping[str, Tensor]) -> None:
        """Writes an entry atomically: a temporary file in the same folder, fsync, then rename."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Clone so that views of larger tensors do not drag their whole storage into the file.
        stored = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
        payload = {"format": FORMAT_VERSION, "key": key, "checksum": _checksum(stored), "tensors": stored}
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(payload, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get_or_compute(self, key: str, compute: Callable[[], Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Cached tensors for ``key``, else ``compute()``'s result, which is then stored.

        A failure to write (read-only or full disk) only costs the cache: it is logged and the
        computed tensors are returned.
        """
        cached = self.load(key)
        if cached is not None:
            return cached
        tensors = compute()
        try:
            self.save(key, tensors)
        except OSError as error:
            _LOGGER.warning("Could not write feature cache entry %s: %s", self.path(key), error)
        return tensors
