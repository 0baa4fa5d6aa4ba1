"""What an ovs3d command needs from its Python process, set up when one runs, never at import.

nerfstudio imports every installed plugin for every ``ns-*`` command, so anything this
package did at import would change ``ns-train nerfacto`` too. :func:`prepare_ovs3d_process`
is called instead by the two places where an ovs3d command starts:

* the constructor of :class:`~ovs3d_nerfstudio.pipeline.Ovs3dPipeline`, which every
  ``ns-train/-eval/-render/-viewer`` run of ours goes through before it reads data, loads a
  checkpoint or renders a video. nerfstudio offers no earlier hook that runs only for our
  method: the config dataclasses (``__post_init__``, their ``_target`` factories) are
  already built at import, when the method entry point is registered. Nothing of ours that
  can raise runs before the pipeline: ``ns-train`` only parses and saves the config first,
  and a value refused while parsing is reported by the parser itself;
* the entry points of our own commands (``ovs3d-demo``, ``ovs3d-export``, ``ovs3d-legend``,
  ``ovs3d-camera-path``), before they read their arguments' files.

Calling it more than once is harmless: each step checks whether it is done already.
"""

from __future__ import annotations

from typing import Any, Protocol, Type

import tyro

from ovs3d_nerfstudio.bundled_ffmpeg import provide_ffmpeg
from ovs3d_nerfstudio.checkpoints import register_checkpoint_globals
from ovs3d_nerfstudio.errors import install_excepthook


def prepare_ovs3d_process() -> None:
    """One-line user errors, loadable checkpoints under torch >= 2.6, and ffmpeg for label videos."""
    install_excepthook()
    register_checkpoint_globals()
    provide_ffmpeg()


class Command(Protocol):
    """A command's options as a dataclass whose ``main`` does the work."""

    def main(self) -> Any: ...


def run_command(command: Type[Command]) -> Any:
    """The body of our commands' entry points: set up the process, parse the command line into
    ``command`` (tyro, with nerfstudio's accent colour) and run it."""
    prepare_ovs3d_process()
    tyro.extras.set_accent_color("bright_yellow")
    return tyro.cli(command).main()
