"""An ``ffmpeg`` on PATH for label videos, from the ``imageio-ffmpeg`` dependency.

``ns-render spiral|interpolate|camera-path`` first checks ``shutil.which("ffmpeg")`` and
then encodes through mediapy, which runs the ``ffmpeg`` found on PATH. Machines without a
system ffmpeg still have the static binary of the ``imageio-ffmpeg`` dependency, but under
a versioned file name that neither looks for. :func:`provide_ffmpeg` links it as ``ffmpeg``
in a small folder and puts that folder on this process's PATH (child processes inherit it),
which satisfies nerfstudio's check and mediapy alike without importing either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ovs3d_nerfstudio.features.cache import default_cache_dir

_FFMPEG_NAME = "ffmpeg.exe" if os.name == "nt" else "ffmpeg"
"""The file name that PATH lookups for ``ffmpeg`` find."""


def provide_ffmpeg() -> Optional[Path]:
    """Makes ``ffmpeg`` resolvable on PATH; returns its path, or None when there is none at all.

    A system ffmpeg on PATH always wins. Cheap enough to run whenever an ovs3d pipeline is
    built: one PATH lookup, and the link is only (re)made when missing or pointing at another
    binary.
    """
    found = shutil.which("ffmpeg")
    if found is not None:
        return Path(found)
    try:
        import imageio_ffmpeg

        bundled = Path(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):  # not installed, or no binary for this platform
        return None
    try:
        folder = _link_ffmpeg(bundled, default_cache_dir() / "bin")
    except OSError:  # read-only home: a private temporary folder still works for this process
        folder = _link_ffmpeg(bundled, Path(tempfile.mkdtemp(prefix="ovs3d-ffmpeg-")))
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    return folder / _FFMPEG_NAME


def _link_ffmpeg(bundled: Path, folder: Path) -> Path:
    """Puts ``folder/ffmpeg`` -> ``bundled``; atomic, so parallel processes never see half a link."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / _FFMPEG_NAME
    if link.is_symlink() and Path(os.readlink(link)) == bundled:
        return folder
    staging = folder / f".{os.getpid()}-{_FFMPEG_NAME}"
    staging.unlink(missing_ok=True)
    try:
        staging.symlink_to(bundled)
    except OSError:  # no symlink privilege (Windows): a copy of the binary
        shutil.copy2(bundled, staging)
    os.replace(staging, link)
    return folder
