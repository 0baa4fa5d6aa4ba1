"""What rendering and exporting a trained run need: an ffmpeg binary, and loading the run.

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
from typing import TYPE_CHECKING, Literal, Optional

from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.features.cache import default_cache_dir

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import TrainerConfig

    from ovs3d_nerfstudio.pipeline import Ovs3dPipeline

_FFMPEG_NAME = "ffmpeg.exe" if os.name == "nt" else "ffmpeg"
"""The file name that PATH lookups for ``ffmpeg`` find."""


def provide_ffmpeg() -> Optional[Path]:
    """Makes ``ffmpeg`` resolvable on PATH; returns its path, or None when there is none at all.

    A system ffmpeg on PATH always wins. Cheap enough to run at package import: one PATH
    lookup, and the link is only (re)made when missing or pointing at another binary.
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


def load_ovs3d_config(config_path: Path) -> "TrainerConfig":
    """Reads a trained ovs3d run's ``config.yml``; a wrong path or another method's run raises
    one :class:`UserFacingError`. nerfstudio is imported here, not at module level, because this
    module is imported while nerfstudio is still discovering its plugins."""
    import yaml
    from nerfstudio.engine.trainer import TrainerConfig

    from ovs3d_nerfstudio.model import Ovs3dModelConfig

    config_path = Path(config_path)
    hint = "pass the config.yml of a trained ovs3d run (outputs/<experiment>/ovs3d/<timestamp>/config.yml)"
    if not config_path.is_file():
        raise UserFacingError(f"{config_path} is not a file: {hint}.")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserFacingError(f"{config_path} is not a nerfstudio run config ({error}): {hint}.") from error
    if not isinstance(config, TrainerConfig):
        raise UserFacingError(f"{config_path} is not a nerfstudio run config: {hint}.")
    if not isinstance(config.pipeline.model, Ovs3dModelConfig):
        raise UserFacingError(f"{config_path} is a '{config.method_name}' run, not an ovs3d run: {hint}.")
    return config


def load_ovs3d_run(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "inference"
) -> "Ovs3dPipeline":
    """Loads a trained ovs3d run's pipeline and latest checkpoint for our scripts, after
    :func:`load_ovs3d_config` has checked the file (before any model is built)."""
    from nerfstudio.utils.eval_utils import eval_setup

    load_ovs3d_config(config_path)
    _, pipeline, _, _ = eval_setup(Path(config_path), test_mode=test_mode)
    return pipeline
