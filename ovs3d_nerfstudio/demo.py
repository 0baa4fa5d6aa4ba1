"""``ovs3d-demo``: generate a built-in scene, train ovs3d on it, evaluate, render, report.

Everything a newcomer needs to see the method work, in one command and no download:

1. writes one of the synthetic benchmark's procedural scenes (exact masks included);
2. trains the ``ovs3d`` method through the full schedule (reconstruction, segmentation
   frozen, segmentation joint) with a profile sized for a CPU laptop (or the GPU profile);
3. evaluates with ``ns-eval``'s code path and writes ``metrics.json``;
4. renders a short label video along a spiral and its legend;
5. prints where everything went and how to open the run in ``ns-viewer``.

Real CLIP and DINO weights are used when both are found locally (explicit paths or the
caches); otherwise the synthetic teachers are used, and the demo says so plainly.
Features are cached by content, so a rerun reuses them; each run gets its own timestamped
folder and never overwrites an earlier one.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Literal, Mapping, Optional, Tuple

import torch
import tyro
from rich.panel import Panel

from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.errors import UserFacingError
from ovs3d_nerfstudio.features.cache import default_cache_dir

if TYPE_CHECKING:
    from ovs3d_nerfstudio.synthetic.benchmark import Profile

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
    """Frames of the label video (a spiral around the training views)."""


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


def render_label_video(pipeline, output: Path, seconds: float, frames: int) -> Path:
    """A spiral label video around the first training view, through ns-render's own renderer."""
    from nerfstudio.cameras.camera_paths import get_spiral_path
    from nerfstudio.scripts.render import _render_trajectory_video

    from ovs3d_nerfstudio.render_support import provide_ffmpeg

    provide_ffmpeg()
    start = pipeline.datamanager.train_dataset.cameras[0:1]
    cameras = get_spiral_path(start, steps=frames, radius=0.1).to(pipeline.device)
    _render_trajectory_video(pipeline, cameras, output, rendered_output_names=["labels"], seconds=seconds)
    return output


def run_demo(config: DemoConfig, profiles: Optional[Mapping[str, "Profile"]] = None) -> Dict[str, Path]:
    """Runs the whole demo; returns the paths it wrote. ``profiles`` defaults to the benchmark's."""
    from ovs3d_nerfstudio.legend import write_legend
    from ovs3d_nerfstudio.synthetic.benchmark import PROFILES, build_config, evaluate, train
    from ovs3d_nerfstudio.synthetic.scenes import scene_layouts, write_benchmark_scene

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
    trainer_config.save_config()  # what ns-train writes first: ns-viewer/ns-eval/ns-render load it
    trained = train(trainer_config)
    pipeline = trained.trainer.pipeline
    config_path = trainer_config.get_base_dir() / "config.yml"

    CONSOLE.print("[bold]3/4[/bold] evaluating (ns-eval's code path)")
    results = evaluate(trained.trainer)
    metrics_path = run_dir / "metrics.json"
    metrics_path.write_text(
        json.dumps(
            {"experiment_name": "demo", "method_name": "ovs3d", "teachers": teachers, "teachers_note": reason, "results": results},
            indent=2,
        )
    )

    CONSOLE.print("[bold]4/4[/bold] rendering the label video and legend")
    with torch.no_grad():
        video = render_label_video(pipeline, run_dir / "labels.mp4", config.video_seconds, config.video_frames)
    model = pipeline.model
    legend = write_legend(model.labels, model.label_colours, run_dir / "labels_legend.png")

    minutes = (time.perf_counter() - started) / 60
    CONSOLE.print(
        Panel(
            f"mIoU {results['miou']:.3f}, accuracy {results['accuracy']:.3f} with the {teachers.upper()} teachers\n"
            f"scene:        {scene}\n"
            f"trained run:  {config_path.parent}\n"
            f"metrics:      {metrics_path}\n"
            f"label video:  {video}\n"
            f"legend:       {legend}\n\n"
            f"Open it in the viewer:  ns-viewer --load-config {config_path}\n"
            f"Finished in {minutes:.1f} min.",
            title="ovs3d-demo: done",
            style="bold green",
        )
    )
    return {"run": run_dir, "config": config_path, "metrics": metrics_path, "video": video, "legend": legend}


def entrypoint() -> None:
    # Deprecation notices of nerfstudio 1.1 running on a newer torch: nothing a demo user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(nerfstudio|torch)(\.|$)")
    run_demo(tyro.cli(DemoConfig, description=__doc__.splitlines()[0]))
