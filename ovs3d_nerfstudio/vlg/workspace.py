"""The folder one ``ovs3d-vlg`` project lives in, and its files:

    WORK/scenes/<name>.pt        prepared scenes (points, fused features, pseudo labels)
    WORK/data/<name>/            procedural scenes written by 'prepare --procedural'
    WORK/adapter.pt              the ESS adapter (with the vocabulary and its text features)
    WORK/esgs.pt                 the ESGS network (with its architecture and voxel size)
    WORK/predictions/<name>/     points.ply, labels.txt, legend.png, embeddings.npy, metrics.json

Every file is written to a temporary name and renamed, so a stopped command leaves none half
written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..errors import UserFacingError
from .ess import Adapter
from .files import write_atomically
from .minkunet import MinkUNet, MinkUNetSpec
from .prepare import PreparedScene

FORMAT_VERSION = 1


@dataclass
class Workspace:
    root: Path

    @property
    def adapter_path(self) -> Path:
        return self.root / "adapter.pt"

    @property
    def network_path(self) -> Path:
        return self.root / "esgs.pt"

    def scene_path(self, name: str) -> Path:
        return self.root / "scenes" / f"{name}.pt"

    def data_path(self, name: str) -> Path:
        return self.root / "data" / name

    def prediction_folder(self, name: str) -> Path:
        return self.root / "predictions" / name

    def scene_names(self) -> List[str]:
        return sorted(path.stem for path in (self.root / "scenes").glob("*.pt"))

    def load_scenes(self, names: Sequence[str]) -> List[PreparedScene]:
        """The named prepared scenes (all of them when none is named), sharing one vocabulary."""
        names = list(names) or self.scene_names()
        if not names:
            raise UserFacingError(f"{self.root} has no prepared scene: run 'ovs3d-vlg prepare --work {self.root}' first")
        scenes = [PreparedScene.load(self.scene_path(name)) for name in names]
        for scene in scenes[1:]:
            if scene.vocabulary != scenes[0].vocabulary:
                raise UserFacingError(
                    f"scenes {scenes[0].name} and {scene.name} were prepared with different vocabularies: "
                    "prepare every scene with the same --vocabulary file"
                )
        return scenes


def save_atomically(payload: Dict, path: Path) -> Path:
    return write_atomically(path, lambda file: torch.save({"format": FORMAT_VERSION, **payload}, file))


def load_checkpoint(path: Path, command: str) -> Dict:
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"no {path.name} in {path.parent}: run 'ovs3d-vlg {command} --work {path.parent}' first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a damaged file is a one-line error
        raise UserFacingError(f"cannot read {path} ({type(error).__name__}): run 'ovs3d-vlg {command}' again") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise UserFacingError(f"{path} is not an ovs3d-vlg file of this version: run 'ovs3d-vlg {command}' again")
    return payload


def save_adapter(workspace: Workspace, adapter: Adapter, vocabulary: Sequence[str], scenes: Sequence[str], history) -> Path:
    return save_atomically(
        {"state": adapter.state_dict(), "vocabulary": list(vocabulary), "scenes": list(scenes), "history": list(history)},
        workspace.adapter_path,
    )


def load_adapter(workspace: Workspace) -> tuple:
    """The frozen adapter and its vocabulary."""
    payload = load_checkpoint(workspace.adapter_path, "ess")
    adapter = Adapter(payload["state"]["text"])
    adapter.load_state_dict(payload["state"])
    adapter.eval()
    for parameter in adapter.parameters():
        parameter.requires_grad_(False)
    return adapter, payload["vocabulary"]


def save_network(
    path: Path,
    network: MinkUNet,
    vocabulary: Sequence[str],
    text_features: torch.Tensor,
    voxel_size: Optional[float],
    scenes: Sequence[str],
    history,
    targets: str,
) -> Path:
    """``voxel_size`` is in the data's original units, or None for each scene's automatic size;
    ``targets`` names what was distilled ("adapter" or "fused")."""
    return save_atomically(
        {
            "state": network.state_dict(),
            "spec": dataclasses.asdict(network.spec),
            "in_channels": network.in_channels,
            "out_channels": network.out_channels,
            "backend": network.backend,
            "vocabulary": list(vocabulary),
            "text": text_features,
            "voxel_size": voxel_size,
            "scenes": list(scenes),
            "history": list(history),
            "targets": targets,
        },
        path,
    )


def load_network(path: Path) -> tuple:
    """The ESGS network (eval mode) and its checkpoint's other entries."""
    payload = load_checkpoint(path, "esg")
    spec = MinkUNetSpec(**{key: tuple(value) if isinstance(value, list) else value for key, value in payload["spec"].items()})
    network = MinkUNet(payload["in_channels"], payload["out_channels"], spec, backend=payload["backend"])
    network.load_state_dict(payload["state"])
    network.eval()
    return network, payload

