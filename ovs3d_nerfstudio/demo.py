"""``ovs3d-demo``: generate a built-in scene, train ovs3d on it, evaluate, render, report.

Everything a newcomer needs to see the method work, in one command and no download:

1. writes one of the synthetic benchmark's procedural scenes (exact masks included);
2. trains the ``ovs3d`` method through the full schedule (reconstruction, segmentation
   frozen, segmentation joint) with a profile sized for a CPU laptop (or the GPU profile);
3. evaluates with ``ns-eval``'s code path and writes ``metrics.json``;
4. writes a forward-facing camera path (the LLFF spiral, ``camera_path.json``) and renders
   along it a video of RGB, label map and legend side by side, and the legend alone;
5. prints where everything went and how to open the run in ``ns-viewer``.

Real CLIP and DINO weights are used when both are found locally (explicit paths or the
caches); otherwise the synthetic teachers are used, and the demo says so plainly.
Features are cached by content, so a rerun reuses them; each run gets its own timestamped
folder and never overwrites an earlier one.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Literal, Mapping, Optional, Tuple

import numpy as np
import torch
import tyro
from jaxtyping import Float, Int, UInt8
from rich.panel import Panel
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.features.cache import default_cache_dir
from ovs3d_nerfstudio.process import prepare_ovs3d_process

if TYPE_CHECKING:
    from ovs3d_nerfstudio.synthetic.profiles import Profile

REAL_CLIP = ("ViT-B-16", "openai")
REAL_DINO = "vit_base_patch8_224_dino"


@dataclass
class DemoConfig:
    """Options of ``ovs3d-demo`` (all have working defaults)."""

    output_dir: Path = Path("outputs/ovs3d-demo")
    """Each run is written to a new timestamped folder under this one."""
    scene: str = "fruit_lawn"
    """Built-in scene: one of the synthetic benchmark's layouts."""
    seed: int = 0
    """Scene seed (layout, textures)."""
    profile: str = "cpu"
    """Training profile of the synthetic benchmark: 'cpu' (a laptop, minutes) or 'gpu' (the paper's settings)."""
    teachers: Literal["auto", "real", "synthetic"] = "auto"
    """'auto' uses real CLIP + DINO when both weights are found locally, else synthetic ones."""
    clip_weights: Optional[Path] = None
    """Explicit open_clip ViT-B-16 checkpoint (otherwise the cache is searched)."""
    dino_weights: Optional[Path] = None
    """Explicit DINO ViT-B/8 checkpoint (otherwise the torch hub cache is searched)."""
    cache_dir: Optional[Path] = None
    """Feature cache shared by reruns (default: the user cache folder)."""
    video_seconds: float = 3.0
    """Length of the label video."""
    video_frames: int = 24
    """Frames of the label video: one turn of the LLFF spiral around the mean training view."""
    video_height: int = 240
    """Least height of the video's RGB and label panels in pixels: frames are rendered at the
    training images' size and enlarged by a whole factor (nearest neighbour) to reach it."""


def find_real_teachers(config: DemoConfig) -> Tuple[Optional[Dict[str, object]], str]:
    """Overrides that select real CLIP + DINO when both weights exist locally, and why not otherwise."""
    from ovs3d_nerfstudio.teachers.dino import hub_checkpoint_path
    from ovs3d_nerfstudio.teachers.openclip import find_cached_weights

    missing = []
    clip = config.clip_weights
    if clip is None:
        try:
            clip = find_cached_weights(*REAL_CLIP)
        except UserFacingError:
            missing.append("open_clip ViT-B-16 (openai)")
    dino = config.dino_weights or hub_checkpoint_path(REAL_DINO)
    if not Path(dino).is_file():
        missing.append(f"DINO ViT-B/8 ({dino})")
    if missing:
        return None, "no local weights for " + " and ".join(missing)
    overrides: Dict[str, object] = {
        "pipeline.datamanager.clip.weights_path": Path(clip),
        "pipeline.datamanager.dino.weights_path": Path(dino),
    }
    return overrides, f"real teachers: CLIP {clip}, DINO {dino}"


def new_run_folder(output_dir: Path) -> Path:
    """A fresh timestamped folder; never an existing one."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        folder = output_dir / f"{stamp}{suffix}"
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            continue
    raise UserFacingError(f"could not create a new run folder under {output_dir}")


LABEL_SHOWN_FRACTION = 0.005
"""A label counts as shown in an image when it covers at least this fraction of the pixels
(0.5 %: isolated noisy pixels do not count, the benchmark's smallest objects, ~0.7 %, do)."""


def labels_shown(label_ids: Int[Tensor, "H W"], num_labels: int, min_fraction: float = LABEL_SHOWN_FRACTION) -> int:
    """Number of labels that cover at least ``min_fraction`` of an image's pixels."""
    counts = torch.bincount(label_ids.reshape(-1).long(), minlength=num_labels)
    return int((counts >= min_fraction * label_ids.numel()).sum())


def video_frame(
    rgb: Float[Tensor, "H W 3"], labels: Float[Tensor, "H W 3"], legend: UInt8[np.ndarray, "h w 3"], enlarge: int = 1
) -> UInt8[np.ndarray, "Hf Wf 3"]:
    """RGB | label map | legend, side by side on white, padded to even sides (H.264 needs them).

    RGB and labels are enlarged ``enlarge`` times by pixel repetition (label edges stay exact);
    the legend keeps its size, its text is readable as it is."""
    panels = [
        (image.clamp(0.0, 1.0) * 255.0).round().byte().repeat_interleave(enlarge, 0).repeat_interleave(enlarge, 1).cpu().numpy()
        for image in (rgb, labels)
    ] + [legend]
    height = max(panel.shape[0] for panel in panels)
    width = sum(panel.shape[1] for panel in panels)
    frame = np.full((height + height % 2, width + width % 2, 3), 255, dtype=np.uint8)
    left = 0
    for panel in panels:
        frame[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1]
    return frame


@dataclass
class LabelVideo:
    """What :func:`render_label_video` wrote and showed."""

    video: Path
    camera_path: Path
    size: Tuple[int, int]
    """Width and height of the video frames."""
    labels_per_frame: List[int]
    """:func:`labels_shown` of each frame's label map."""


def render_label_video(pipeline, run_dir: Path, seconds: float, frames: int, height: int) -> LabelVideo:
    """Writes the LLFF spiral of the training cameras as ``camera_path.json`` and renders it the way
    ``ns-render camera-path`` reads it (nerfstudio's ``get_path_from_json``), RGB | labels | legend.

    Frames are rendered at the training images' size (a CPU renders a few thousand rays per
    second) and enlarged by the smallest whole factor that makes them ``height`` pixels tall."""
    import mediapy
    from nerfstudio.cameras.camera_paths import get_path_from_json

    from ovs3d_nerfstudio.camera_paths import forward_facing_path, write_camera_path
    from ovs3d_nerfstudio.bundled_ffmpeg import provide_ffmpeg
    from ovs3d_nerfstudio.legend_image import legend_image

    provide_ffmpeg()  # mediapy's writer runs the ffmpeg on PATH
    datamanager, model = pipeline.datamanager, pipeline.model
    cameras = datamanager.train_dataset.cameras  # at the resolution the run serves views
    train_height = float(cameras.height[0])
    path = forward_facing_path(
        cameras.camera_to_worlds,
        float(cameras.fy[0]),
        (float(cameras.width[0]), train_height),
        datamanager.train_dataparser_outputs.metadata.get("near_far"),
        kind="spiral",
        frames=frames,
        seconds=seconds,
        rotations=1.0,
    )
    camera_path = write_camera_path(path, run_dir / "camera_path.json")
    path_cameras = get_path_from_json(path).to(pipeline.device)
    legend = legend_image(model.display_labels, model.display_colours)
    labels_per_frame: List[int] = []
    enlarge = max(1, math.ceil(height / train_height))
    frames_out = _path_frames(model, path_cameras, legend, enlarge, labels_per_frame)
    first = next(frames_out)
    output = run_dir / "labels.mp4"
    with mediapy.VideoWriter(output, shape=first.shape[:2], fps=len(path_cameras) / seconds) as writer:
        for frame in itertools.chain([first], frames_out):
            writer.add_image(frame)
    return LabelVideo(output, camera_path, (first.shape[1], first.shape[0]), labels_per_frame)


def _path_frames(
    model, cameras, legend: UInt8[np.ndarray, "h w 3"], enlarge: int, labels_per_frame: List[int]
) -> Iterator[np.ndarray]:
    """Renders each camera of a path into a video frame, noting how many labels it shows."""
    for index in range(len(cameras)):
        outputs = model.get_outputs_for_camera(cameras[index : index + 1])
        labels_per_frame.append(labels_shown(outputs["class_probabilities"].argmax(-1), len(model.display_labels)))
        yield video_frame(outputs["rgb"], outputs["labels"], legend, enlarge)


def run_demo(config: DemoConfig, profiles: Optional[Mapping[str, "Profile"]] = None) -> Dict[str, Path]:
    """Runs the whole demo; returns the paths it wrote. ``profiles`` defaults to the synthetic benchmark's."""
    from ovs3d_nerfstudio.legend_image import write_legend
    from ovs3d_nerfstudio.synthetic.profiles import PROFILES, build_config
    from ovs3d_nerfstudio.synthetic.scenes import scene_layouts, write_benchmark_scene
    from ovs3d_nerfstudio.training import evaluate, train_in_process

    profiles = PROFILES if profiles is None else profiles
    if config.scene not in scene_layouts():
        raise UserFacingError(f"unknown scene '{config.scene}'; choose one of {', '.join(scene_layouts())}")
    if config.profile not in profiles:
        raise UserFacingError(f"unknown profile '{config.profile}'; choose one of {', '.join(profiles)}")
    started = time.perf_counter()
    profile = profiles[config.profile]

    real, reason = find_real_teachers(config) if config.teachers != "synthetic" else (None, "asked for synthetic")
    if config.teachers == "real" and real is None:
        raise UserFacingError(f"--teachers real, but {reason}. See docs/teachers.md to provide the weights.")
    teachers = "synthetic" if real is None else "real"
    if real is None:
        CONSOLE.print(
            Panel(
                f"Using the SYNTHETIC CLIP-like and DINO-like teachers ({reason}).\n"
                "They stand in for CLIP and DINO so the whole method runs offline; see "
                "docs/synthetic-benchmark.md. Give real weights with --clip-weights/--dino-weights.",
                title="ovs3d-demo: teachers",
                style="bold yellow",
            )
        )
        teacher_overrides: Dict[str, object] = {}
    else:
        CONSOLE.print(Panel(f"Using the {reason}.", title="ovs3d-demo: teachers", style="bold green"))
        teacher_overrides = {
            "pipeline.datamanager.clip.source": "open_clip",
            "pipeline.datamanager.dino.source": "dino_v1",
            **real,
        }

    run_dir = new_run_folder(config.output_dir)
    CONSOLE.print(f"[bold]1/4[/bold] writing the built-in scene '{config.scene}' to {run_dir}")
    scene = write_benchmark_scene(
        config.scene, run_dir / "scene", config.seed, profile.width, profile.height, profile.num_views
    )

    reconstruction, frozen, joint = profile.steps()
    CONSOLE.print(
        f"[bold]2/4[/bold] training ovs3d through its full schedule: {reconstruction} reconstruction + {frozen} "
        f"segmentation-frozen + {joint} segmentation-joint steps on {profile.width}x{profile.height} images "
        f"(the synthetic benchmark's '{profile.name}' profile, docs/benchmarks.md)"
    )
    trainer_config = build_config(profile, teacher_overrides, scene, run_dir, "demo")
    trainer_config.pipeline.datamanager.cache_dir = config.cache_dir or default_cache_dir()
    trainer_config.steps_per_save = trainer_config.max_num_iterations
    trainer = trainer_config.setup(local_rank=0, world_size=1)
    train_in_process(trainer)
    pipeline = trainer.pipeline
    config_path = trainer_config.get_base_dir() / "config.yml"

    CONSOLE.print("[bold]3/4[/bold] evaluating (ns-eval's code path)")
    model = pipeline.model
    labels_per_eval_view: List[int] = []
    results = evaluate(
        pipeline, on_view=lambda predicted, truth: labels_per_eval_view.append(labels_shown(predicted, len(model.labels)))
    )

    CONSOLE.print("[bold]4/4[/bold] rendering the label video along the scene's spiral, and the legend")
    with torch.no_grad():
        video = render_label_video(pipeline, run_dir, config.video_seconds, config.video_frames, config.video_height)
    legend = write_legend(model.labels, model.label_colours, run_dir / "labels_legend.png")
    shown = {
        "min_fraction": LABEL_SHOWN_FRACTION,
        "per_video_frame": video.labels_per_frame,
        "per_eval_view": labels_per_eval_view,
    }
    metrics_path = run_dir / "metrics.json"
    report: Dict[str, Any] = {
        "experiment_name": "demo",
        "method_name": "ovs3d",
        "teachers": teachers,
        "teachers_note": reason,
        "results": results,
        "video": {"file": str(video.video), "camera_path": str(video.camera_path), "size": list(video.size)},
        "labels_shown": shown,
    }
    metrics_path.write_text(json.dumps(report, indent=2))

    minutes = (time.perf_counter() - started) / 60
    CONSOLE.print(
        Panel(
            f"mIoU {results['miou']:.3f}, accuracy {results['accuracy']:.3f} with the {teachers.upper()} teachers\n"
            f"scene:        {scene}\n"
            f"trained run:  {config_path.parent}\n"
            f"metrics:      {metrics_path}\n"
            f"label video:  {video.video} ({video.size[0]}x{video.size[1]}, {len(video.labels_per_frame)} frames: "
            f"RGB | labels | legend; median {statistics.median(video.labels_per_frame):g} labels shown per frame, "
            f"{statistics.median(labels_per_eval_view):g} in the eval views)\n"
            f"legend:       {legend}\n\n"
            f"Open it in the viewer:  ns-viewer --load-config {config_path}\n"
            f"Render the path again:  ns-render camera-path --load-config {config_path} --camera-path-filename "
            f"{video.camera_path} --rendered-output-names rgb labels --output-path {run_dir / 'rgb_labels.mp4'}\n"
            f"Finished in {minutes:.1f} min.",
            title="ovs3d-demo: done",
            style="bold green",
        )
    )
    return {
        "run": run_dir,
        "config": config_path,
        "metrics": metrics_path,
        "video": video.video,
        "camera_path": video.camera_path,
        "legend": legend,
    }


def entrypoint() -> None:
    """Entry point of ``ovs3d-demo``."""
    prepare_ovs3d_process()
    # Deprecation notices of nerfstudio 1.1 running on a newer torch: nothing a demo user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(nerfstudio|torch)(\.|$)")
    run_demo(tyro.cli(DemoConfig, description=__doc__.splitlines()[0]))
