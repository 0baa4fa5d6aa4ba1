"""``ovs3d-vlg``: the point-cloud path (3DSS-VLG) in one command with subcommands.

    ovs3d-vlg prepare  --work W --data SCENE          points, fused 2D features, pseudo labels
    ovs3d-vlg prepare  --work W --procedural fruit_lawn   (a procedural scene with exact labels)
    ovs3d-vlg ess      --work W                       the adapter, on every prepared scene
    ovs3d-vlg esg      --work W                       the 3D U-Net, distilled from the adapter
    ovs3d-vlg predict  --work W --scene NAME          labels from the points alone
    ovs3d-vlg evaluate --work W --scene NAME          point and 2D metrics
    ovs3d-vlg label    --work W --points CLOUD.ply --output OUT   any .ply, points alone
    ovs3d-vlg run      --work W --procedural desk     every stage on one scene

docs/vlg.md describes the stages, the files and the options.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import tyro
from typing_extensions import Annotated

from ..data.labels import IGNORE, read_labels, validate_labels
from ..errors import UserFacingError
from ..features.cache import FeatureCache
from ..features.clip_pyramid import PyramidConfig
from ..process import run_command
from ..teachers.config import ClipTeacherConfig
from .ess import EssConfig, EssScene, train_adapter
from .esgs import EsgsConfig, EsgsScene, predict_embeddings, train_esgs
from .evaluate import annotated_views_metrics, point_metrics, teacher_metrics
from .fusion import DepthProvider, fusion_logits, pseudo_labels
from .minkunet import MinkUNetSpec, resolve_architecture
from .outputs import CLIP_LOGIT_SCALE, label_points, prepare_folder, write_json, write_prediction
from .points import (
    LabelledPoints,
    nerfstudio_sparse_points,
    procedural_depth,
    procedural_surface_points,
    to_dataparser_frame,
    up_direction,
    user_points,
)
from .prepare import PreparedScene, check_vocabulary, load_pixel_features, prepare_scene, sensor_depth
from .progress import progress_bar
from .views import load_views
from .voxels import automatic_voxel_size, resolve_voxel_size
from .workspace import Workspace, load_adapter, load_network, save_adapter, save_network


@dataclass
class Prepare:
    """Stage 1: a scene's points, their fused 2D features, coverage and pseudo labels."""

    work: Path
    """The project folder (prepared scenes, models, predictions)."""
    data: Optional[Path] = None
    """Scene folder: 3D-OVS / LLFF layout or nerfstudio format (ns-process-data)."""
    procedural: Optional[str] = None
    """A procedural layout (fruit_lawn, desk, shelf, living_room), written to WORK/data/NAME with
    exact point labels and depth (tests, benchmarks)."""
    seed: int = 0
    """Seed of the procedural layout (and of the point sampling)."""
    image_size: Tuple[int, int] = (160, 120)
    """Width and height of a procedural scene's views."""
    run: Optional[Path] = None
    """config.yml of a trained 'ns-train ovs3d' or 'ovs3d-splat' run of this scene: its frame, feature settings
    (so its cached features are reused) and, with --points run / --depth field, its surface and depth."""
    points: str = "auto"
    """'auto' (procedural: exact; a run: its surface; nerfstudio data: sparse points), 'procedural',
    'sparse', 'run', or a .ply file."""
    points_frame: Literal["world", "dataparser"] = "world"
    """Frame of a .ply given with --points: the data's original frame, or the dataparser's."""
    num_points: int = 200_000
    """Surface points sampled from a run (--points run)."""
    surface_opacity: float = 0.5
    """A run's surface: rays whose rendered opacity exceeds this (ovs3d), or Gaussians whose own
    opacity does (ovs3d-splat)."""
    rays_per_pixel: float = 0.25
    """Exact points of a procedural scene: rays cast per pixel of every view."""
    depth: Literal["auto", "exact", "zbuffer", "sensor", "field"] = "auto"
    """Occlusion depth: 'auto' is exact for procedural scenes, the field's with a run, sensor depth
    when the data has it, else a z-buffer of the points."""
    name: Optional[str] = None
    """Name of the prepared scene (default: the layout or the data folder's name)."""
    vocabulary: Optional[Path] = None
    """Labels file (one per line) shared by every scene trained together; default: the scene's labels."""
    clip: ClipTeacherConfig = field(default_factory=ClipTeacherConfig)
    """The CLIP-like teacher, as for ns-train ovs3d (a run's teacher replaces it)."""
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    """Alg. 1 window settings, as for ns-train ovs3d."""
    ray_downscale: int = 8
    """Features at 1/this of the image size, as ns-train ovs3d's --pipeline.datamanager.ray-downscale."""
    cache_dir: Optional[Path] = None
    """Feature cache folder (default: the one ns-train ovs3d uses)."""

    def main(self) -> PreparedScene:
        return self.prepare()

    def prepare(self) -> PreparedScene:
        workspace = Workspace(self.work)
        spec, run, data = self._source(workspace)
        name = self.name or self.procedural or Path(data).name
        clip, pyramid, downscale, cache_dir = self.clip, self.pyramid, self.ray_downscale, self.cache_dir
        if run is not None:
            clip, pyramid, downscale, cache_dir = run.clip, run.pyramid, run.ray_downscale, run.cache_dir
        views = load_views(data, parser=run.dataparser if run is not None else None)
        vocabulary = list(views.labels)
        if self.vocabulary is not None:
            vocabulary = validate_labels(read_labels(self.vocabulary), str(self.vocabulary))
            check_vocabulary(vocabulary, views.labels, name)  # before any teacher call
        points = self._points(spec, run, views)
        teacher = clip.setup("cpu")
        store, computed = load_pixel_features(
            views.images(downscale), teacher, pyramid, FeatureCache(cache_dir), clip.crops_per_batch("cpu")
        )
        depth = self._depth(spec, run, views, store.height, store.width, downscale)
        with torch.no_grad():
            text = teacher.encode_text(vocabulary).float()
        info = {"views_computed": computed, "views": views.num_views, "depth": self._depth_kind(spec, run, views)}
        scene = prepare_scene(
            name, points, views, store, downscale, text, vocabulary, depth, up_direction(views.camera_to_worlds), info
        )
        scene.info["teacher_2d"] = teacher_metrics(views, store, text, vocabulary)
        scene.info["teacher_2d_masked"] = teacher_metrics(views, store, text, vocabulary, scene.scene_mask())
        scene.save(workspace.scene_path(name))
        print(
            f"ovs3d-vlg: prepared {name}: {len(scene.xyz)} points, {float(scene.covered.float().mean()):.1%} seen, "
            f"features of {computed} of {views.num_views} views computed (the rest from the cache) -> "
            f"{workspace.scene_path(name)}"
        )
        return scene

    def _source(self, workspace: Workspace):
        """(procedural spec or None, trained run or None, scene folder)."""
        if self.run is not None:
            if not Path(self.run).is_file():  # before importing the model code, which takes seconds
                raise UserFacingError(f"no trained run at {self.run}: pass the config.yml of an 'ns-train ovs3d' or 'ns-train ovs3d-splat' run")
            from .sources import check_same_scene, load_run

            run = load_run(self.run)
            return None, run, check_same_scene(run, self.data)
        if self.procedural is not None:
            spec, data = self._write_procedural(workspace)
            return spec, None, data
        if self.data is not None:
            return None, None, self.data
        raise UserFacingError("give the scene: --data SCENE_FOLDER, --procedural LAYOUT or --run RUN/config.yml")

    def _write_procedural(self, workspace: Workspace):
        from ..data.procedural import write_scene
        from ..synthetic.scenes import benchmark_mask_views, scene_layouts

        layouts = scene_layouts()
        if self.procedural not in layouts:
            raise UserFacingError(f"unknown procedural layout {self.procedural!r}; choose one of {', '.join(layouts)}")
        width, height = self.image_size
        spec = layouts[self.procedural](self.seed, width=width, height=height)
        data = workspace.data_path(self.name or self.procedural)
        if not (data / "poses_bounds.npy").exists():
            write_scene(spec, data, benchmark_mask_views(spec.rig.num_views))
        return spec, data

    def _points(self, spec, run, views) -> LabelledPoints:
        kind = self.points
        if kind == "auto":
            kind = "procedural" if spec is not None else "run" if run is not None else "sparse"
            nerfstudio_data = Path(views.data).suffix == ".json" or (Path(views.data) / "transforms.json").exists()
            if kind == "sparse" and not nerfstudio_data:
                raise UserFacingError(
                    f"{views.data} is a 3D-OVS / LLFF scene without a point cloud: give --points CLOUD.ply, "
                    "or --run RUN/config.yml to use a trained ovs3d run's surface"
                )
        if kind == "procedural":
            if spec is None:
                raise UserFacingError("--points procedural needs --procedural LAYOUT")
            points = procedural_surface_points(spec, self.rays_per_pixel, self.seed)
            points.xyz = to_dataparser_frame(points.xyz, views.transform, views.scale)
            return points
        if kind == "run":
            if run is None:
                raise UserFacingError("--points run needs --run RUN/config.yml")
            if not 0.0 <= self.surface_opacity < 1.0:
                raise UserFacingError(f"--surface-opacity must be in [0, 1); got {self.surface_opacity}")
            from .sources import run_surface_points

            return run_surface_points(run, self.num_points, self.surface_opacity, seed=self.seed)
        if kind == "sparse":
            return nerfstudio_sparse_points(views.data, views.transform, views.scale)
        return user_points(Path(kind), views.transform, views.scale, self.points_frame)

    def _depth_kind(self, spec, run, views) -> str:
        if self.depth != "auto":
            return self.depth
        if spec is not None:
            return "exact"
        if run is not None:
            return "field"
        return "sensor" if views.depth_filenames else "zbuffer"

    def _depth(self, spec, run, views, height: int, width: int, downscale: int) -> Optional[DepthProvider]:
        kind = self._depth_kind(spec, run, views)
        if kind == "exact":
            if spec is None:
                raise UserFacingError("--depth exact is for procedural scenes: use zbuffer, sensor or field")
            return lambda view: torch.from_numpy(procedural_depth(spec, view, height, width) * views.scale)
        if kind == "field":
            if run is None:
                raise UserFacingError("--depth field needs --run RUN/config.yml")
            from .sources import field_depth

            return field_depth(run, views, downscale)
        if kind == "sensor":
            return sensor_depth(views, height, width)
        return None


def ess_training_data(scenes: Sequence[PreparedScene]) -> List[EssScene]:
    """What the adapter trains on: each prepared scene's covered points, features and pseudo labels."""
    return [EssScene.covered(s.fused.float(), s.pseudo, s.coverage) for s in scenes]


@dataclass
class Ess:
    """Stage 2: the ESS adapter on the prepared scenes' fused features and pseudo labels."""

    work: Path
    scenes: Tuple[str, ...] = ()
    """Prepared scenes to train on (default: all in WORK/scenes)."""
    config: EssConfig = field(default_factory=EssConfig)

    def main(self) -> Path:
        try:
            self.config.check()
        except ValueError as error:
            raise UserFacingError(f"ESS setting: {error}") from None
        workspace = Workspace(self.work)
        scenes = workspace.load_scenes(self.scenes)
        data = ess_training_data(scenes)
        with progress_bar("ESS adapter, epochs", self.config.epochs) as advance:
            adapter, history = train_adapter(
                data, scenes[0].text_features, self.config, on_epoch=lambda e, loss: advance(status=f"loss {loss:.4f}")
            )
        path = save_adapter(workspace, adapter, scenes[0].vocabulary, [s.name for s in scenes], history)
        print(f"ovs3d-vlg: adapter trained on {len(scenes)} scene(s), last loss {history[-1]:.4f} -> {path}")
        return path


@dataclass
class EsgOptions:
    """The 3D U-Net and its training (official settings but the length and the class term)."""

    architecture: str = "MinkUNet18A"
    """MinkUNet14A, MinkUNet18A (the paper's) or MinkUNet34C."""
    width_divisor: int = 1
    """Divide every width by this (CPU profiles; 1 = the architecture as published)."""
    epochs: int = 100
    lr: float = 1e-3
    scenes_per_batch: int = 4
    augment: bool = True
    seed: int = 0
    backend: str = "torch"
    device: str = "auto"
    """Where the network trains: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    class_weight: float = 1.0
    """Weight of the class term beside the cosine (0: the paper's and official loss, the cosine
    alone; see docs/vlg.md, stage 3)."""

    def spec(self) -> MinkUNetSpec:
        base = resolve_architecture(self.architecture)
        if self.width_divisor < 1:
            raise UserFacingError(f"--width-divisor must be >= 1; got {self.width_divisor}")
        divide = lambda width: max(1, width // self.width_divisor)  # noqa: E731
        return dataclasses.replace(
            base, planes=tuple(divide(p) for p in base.planes), stem_channels=divide(base.stem_channels)
        )

    def config(self) -> EsgsConfig:
        if not self.class_weight >= 0.0:
            raise UserFacingError(f"--class-weight must be >= 0 (0: the official cosine alone); got {self.class_weight}")
        return EsgsConfig(
            architecture=self.spec(), epochs=self.epochs, lr=self.lr, scenes_per_batch=self.scenes_per_batch,
            augment=self.augment, seed=self.seed, backend=self.backend, device=resolve_device(self.device),
            class_weight=self.class_weight,
        )


def resolve_device(name: str) -> str:
    """'auto' is CUDA when available; a CUDA device on a machine without one is a one-line error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserFacingError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserFacingError(f"--device {name} asks for CUDA, which this machine lacks: use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserFacingError(f"--device {name}: only cpu and cuda are supported")
    return str(device)


def scene_voxel_size(scene: PreparedScene, voxel_size: Optional[float]) -> float:
    """A voxel size in the data's original units (metres for metric data) in the scene's
    dataparser units, or the scene's automatic size."""
    if voxel_size is None:
        return automatic_voxel_size(scene.xyz)
    return resolve_voxel_size([scene.xyz], voxel_size) * scene.scale


@dataclass
class Esg:
    """Stage 3: the 3D U-Net distilled from the frozen adapter's embeddings (ESGS)."""

    work: Path
    scenes: Tuple[str, ...] = ()
    """Prepared scenes to train on (default: all in WORK/scenes)."""
    voxel_size: Optional[float] = None
    """Voxel side in the data's original units (e.g. 0.02 for 2 cm on metric data); required for
    several scenes. Default (one scene): its robust longest side / 256."""
    targets: Literal["adapter", "fused"] = "adapter"
    """The embeddings distilled: the frozen adapter's (ESGS), or the fused features themselves
    (the ablation without ESS)."""
    network: Optional[Path] = None
    """Where to write the network (default: WORK/esgs.pt)."""
    options: EsgOptions = field(default_factory=EsgOptions)

    def main(self) -> Path:
        config = self.options.config()  # a bad option is refused before any loading
        workspace = Workspace(self.work)
        scenes = workspace.load_scenes(self.scenes)
        resolve_voxel_size([s.xyz for s in scenes], self.voxel_size)  # refuses automatic sizes for several scenes
        if self.targets not in ("adapter", "fused"):
            raise UserFacingError(f"--targets must be 'adapter' or 'fused'; got {self.targets!r}")
        if self.targets == "adapter":
            adapter, vocabulary = load_adapter(workspace)
            if vocabulary != scenes[0].vocabulary:
                raise UserFacingError("the adapter was trained with another vocabulary: run 'ovs3d-vlg ess' on these scenes")
            embed, text, logit_scale = adapter, adapter.text, 1.0
        else:
            embed = lambda fused: torch.nn.functional.normalize(fused, dim=1)  # noqa: E731
            text = torch.nn.functional.normalize(scenes[0].text_features, dim=1)
            logit_scale = CLIP_LOGIT_SCALE
        vocabulary = scenes[0].vocabulary
        data = []
        for scene in scenes:
            with torch.no_grad():
                embedded = embed(scene.fused.float())
                targets = torch.nn.functional.normalize(embedded, dim=1).half()
                # The class distribution each stage labels with: the adapter's logits as ESS
                # trained them, the fused features' cosines at CLIP's temperature.
                classes = torch.softmax(logit_scale * embedded @ text.T, dim=1).half() if self.options.class_weight else None
            voxel_size = scene_voxel_size(scene, self.voxel_size)
            data.append(EsgsScene(scene.xyz, scene.colours, targets, scene.covered, scene.up, voxel_size, classes))
        total = config.epochs * math.ceil(len(data) / config.scenes_per_batch)
        with progress_bar("ESGS 3D U-Net, steps", total) as advance:
            network, history = train_esgs(
                data,
                text.shape[1],
                config,
                on_step=lambda step, total, loss: advance(status=f"loss {loss:.4f}"),
                text=text,
            )
        path = save_network(
            self.network or workspace.network_path,
            network,
            vocabulary,
            text,
            self.voxel_size,
            [s.name for s in scenes],
            history,
            targets=self.targets,
        )
        print(f"ovs3d-vlg: 3D U-Net trained for {len(history)} steps, last loss {history[-1]:.4f} -> {path}")
        return path


@dataclass
class Predict:
    """Labels of a prepared scene's points from the points alone (the 3D U-Net), and its metrics."""

    work: Path
    scene: str
    """A prepared scene (only its points and colours are used to predict)."""
    mask_scene_labels: bool = False
    """Restrict the labels to the scene's own (the official evaluation does not)."""
    tta: int = 5
    """Test-time augmentation: passes whose logits are summed (official: 5)."""
    embeddings: bool = False
    """Also write embeddings.npy: one unit embedding per point, for text queries."""
    output: Optional[Path] = None
    """Output folder (default: WORK/predictions/SCENE)."""
    overwrite: bool = False
    """Replace an existing prediction in the output folder."""
    network: Optional[Path] = None
    """The network to predict with (default: WORK/esgs.pt)."""
    device: str = "auto"
    """Where the network runs: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""

    def main(self) -> Dict:
        device = resolve_device(self.device)
        workspace = Workspace(self.work)
        (scene,) = workspace.load_scenes([self.scene])
        folder = prepare_folder(self.output or workspace.prediction_folder(self.scene), self.overwrite)
        network, payload = load_network(self.network or workspace.network_path)
        network.to(device)
        if payload["vocabulary"] != scene.vocabulary:
            raise UserFacingError(f"scene {scene.name} was prepared with another vocabulary than the network's")
        voxel_size = scene_voxel_size(scene, payload["voxel_size"])
        with progress_bar("Predicting from the points, passes", self.tta) as advance:
            embeddings = predict_embeddings(
                network, scene.xyz, scene.colours, voxel_size, scene.up, repeats=self.tta, on_pass=advance
            )
        mask = scene.scene_mask() if self.mask_scene_labels else None
        prediction = label_points(embeddings, payload["text"], mask, keep_embeddings=self.embeddings)
        write_prediction(folder, scene.xyz, scene.colours, prediction, scene.pseudo, scene.coverage, scene.vocabulary)
        metrics = evaluate_scene(scene, prediction.labels, adapter=_optional_adapter(workspace))
        metrics["prediction"] = {"masked": self.mask_scene_labels, "tta": self.tta, "voxel_size": voxel_size}
        write_json(folder / "metrics.json", metrics)
        summary = metrics.get("points", {}).get("esgs", {})
        score = f" (point mIoU {summary['miou']:.3f})" if summary else ""
        print(f"ovs3d-vlg: {len(scene.xyz)} labelled points -> {folder}{score}")
        return metrics


@dataclass
class Label:
    """Labels of any .ply from its points alone, with the trained 3D U-Net: no views, no teacher."""

    work: Path
    """The project folder holding esgs.pt."""
    points: Path
    """The .ply to label (ASCII or binary; colours are used when present, mid grey otherwise)."""
    output: Path
    """Output folder: points.ply, labels.txt, legend.png (embeddings.npy, metrics.json)."""
    up: Tuple[float, float, float] = (0.0, 0.0, 1.0)
    """The cloud's up direction (rotations of test-time augmentation turn about it)."""
    labels: Tuple[str, ...] = ()
    """Restrict the labels to these entries of the network's vocabulary (the scene's labels)."""
    tta: int = 5
    embeddings: bool = False
    overwrite: bool = False
    network: Optional[Path] = None
    """The network (default: WORK/esgs.pt)."""
    device: str = "auto"
    """Where the network runs: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""

    def main(self) -> Dict:
        from .ply import read_ply

        cloud = read_ply(self.points)
        network, payload = load_network(self.network or Workspace(self.work).network_path)
        network.to(resolve_device(self.device))  # before the output folder is touched
        vocabulary = payload["vocabulary"]
        mask = None
        if self.labels:
            advice = f"the network knows {', '.join(vocabulary)}; choose --labels among them or train with a larger vocabulary"
            check_vocabulary(vocabulary, self.labels, str(self.points), advice)
            mask = PreparedScene.vocabulary_mask(vocabulary, self.labels)
        folder = prepare_folder(self.output, self.overwrite)
        # The network's voxel size is in original units, as a user's .ply is; automatic otherwise.
        voxel_size = payload["voxel_size"] if payload["voxel_size"] is not None else automatic_voxel_size(cloud.xyz)
        colours = cloud.colours if cloud.colours is not None else np.full((len(cloud), 3), 0.5, dtype=np.float32)
        with progress_bar("Predicting from the points, passes", self.tta) as advance:
            embeddings = predict_embeddings(
                network, cloud.xyz, colours, voxel_size, np.asarray(self.up), repeats=self.tta, on_pass=advance
            )
        prediction = label_points(embeddings, payload["text"], mask, keep_embeddings=self.embeddings)
        unseen = torch.full((len(cloud),), IGNORE, dtype=torch.long)
        write_prediction(folder, cloud.xyz, colours, prediction, unseen, torch.zeros(len(cloud), dtype=torch.int32), vocabulary)
        counts = torch.bincount(prediction.labels, minlength=len(vocabulary)).tolist()
        metrics = {
            "num_points": len(cloud),
            "points_per_label": dict(zip(vocabulary, counts)),
            "prediction": {"masked": bool(self.labels), "tta": self.tta, "voxel_size": voxel_size},
        }
        write_json(folder / "metrics.json", metrics)
        print(f"ovs3d-vlg: {len(cloud)} labelled points -> {folder}")
        return metrics


def ess_labels(scene: PreparedScene, adapter) -> torch.Tensor:
    """The adapter's labels of the covered points (over the scene's labels); ``IGNORE`` elsewhere."""
    with torch.no_grad():
        return pseudo_labels(adapter.logits(scene.fused.float()), scene.covered, scene.scene_mask())


def evaluate_scene(scene: PreparedScene, predicted: torch.Tensor, adapter=None) -> Dict:
    """Point metrics of the prediction and of the earlier stages' labels (fusion without the
    scene mask, pseudo labels, ESS when the adapter is given) against exact labels (when the
    scene has them), and 2D metrics on the annotated views (when it has masks)."""
    vocabulary = scene.vocabulary
    metrics: Dict[str, object] = {
        "scene": scene.name,
        "num_points": len(scene.xyz),
        "coverage": float(scene.covered.float().mean()),
    }
    unmasked = pseudo_labels(fusion_logits(scene.fused.float(), scene.text_features), scene.covered)
    rows = {"esgs": predicted, "pseudo_labels": scene.pseudo, "fusion_unmasked": unmasked}
    if adapter is not None:
        rows["ess"] = ess_labels(scene, adapter)
    if scene.point_labels is not None:
        truth = torch.from_numpy(scene.point_labels)
        metrics["points"] = {
            # Unlabelled points count as wrong, in no class's intersection.
            name: point_metrics(torch.where(labels == IGNORE, len(vocabulary), labels), truth, len(vocabulary))
            for name, labels in rows.items()
        }
    views = scene.views
    if views.mask_paths and all(path.is_file() for masks in views.mask_paths.values() for path in masks.values()):
        xyz = torch.from_numpy(scene.xyz)
        metrics["views_2d"] = {name: annotated_views_metrics(views, xyz, labels, vocabulary) for name, labels in rows.items()}
        metrics["views_2d"].update(teacher=scene.info.get("teacher_2d"), teacher_masked=scene.info.get("teacher_2d_masked"))
    return metrics


def _optional_adapter(workspace: Workspace):
    """The workspace's adapter for the ESS row, or None when there is none."""
    return load_adapter(workspace)[0] if workspace.adapter_path.exists() else None


@dataclass
class Evaluate:
    """Metrics of an existing prediction (its points.ply labels) against the scene's ground truth."""

    work: Path
    scene: str
    output: Optional[Path] = None
    """The prediction folder (default: WORK/predictions/SCENE)."""

    def main(self) -> Dict:
        from .ply import read_ply

        workspace = Workspace(self.work)
        (scene,) = workspace.load_scenes([self.scene])
        folder = self.output or workspace.prediction_folder(self.scene)
        cloud = read_ply(folder / "points.ply")
        if cloud.labels is None or len(cloud) != len(scene.xyz):
            raise UserFacingError(f"{folder / 'points.ply'} is not the prediction of scene {self.scene}: predict it again")
        metrics = evaluate_scene(scene, torch.from_numpy(cloud.labels), adapter=_optional_adapter(workspace))
        write_json(folder / "metrics.json", metrics)
        print(f"ovs3d-vlg: metrics of {self.scene} -> {folder / 'metrics.json'}")
        return metrics


@dataclass
class Run(Prepare):
    """Every stage on one scene: prepare, ESS, ESGS, predict (with metrics)."""

    ess: EssConfig = field(default_factory=EssConfig)
    esg: EsgOptions = field(default_factory=EsgOptions)
    voxel_size: Optional[float] = None
    """Voxel side in the data's original units; default: the scene's automatic size."""
    mask_scene_labels: bool = False
    tta: int = 5
    embeddings: bool = False
    overwrite: bool = False

    def main(self) -> Dict:
        scene = self.prepare()
        Ess(work=self.work, scenes=(scene.name,), config=self.ess).main()
        Esg(work=self.work, scenes=(scene.name,), voxel_size=self.voxel_size, options=self.esg).main()
        return Predict(
            work=self.work,
            scene=scene.name,
            mask_scene_labels=self.mask_scene_labels,
            tta=self.tta,
            embeddings=self.embeddings,
            overwrite=self.overwrite,
        ).main()


Commands = Union[
    Annotated[Prepare, tyro.conf.subcommand("prepare")],
    Annotated[Ess, tyro.conf.subcommand("ess")],
    Annotated[Esg, tyro.conf.subcommand("esg")],
    Annotated[Predict, tyro.conf.subcommand("predict")],
    Annotated[Evaluate, tyro.conf.subcommand("evaluate")],
    Annotated[Label, tyro.conf.subcommand("label")],
    Annotated[Run, tyro.conf.subcommand("run")],
]


def entrypoint() -> None:
    """Entry point of ``ovs3d-vlg``."""
    run_command(Commands)  # type: ignore[arg-type]


if __name__ == "__main__":
    entrypoint()
