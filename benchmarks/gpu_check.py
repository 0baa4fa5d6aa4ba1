"""Device check for the day a GPU machine is lent: one short run, one JSON file.

Run through ``benchmarks/gpu_check.sh`` (which bounds it to 7.5 minutes). The lent machine
reaches no network, so nothing here downloads or builds from a URL. It records:

* **extensions**: whether tiny-cuda-nn and gsplat work there: each is imported and run once
  (a tiny hash encoding forward + backward; a tiny rasterisation) in its own subprocess, started
  first and given until the end of the run, because gsplat JIT-compiles its CUDA kernels on first
  use and that can take minutes;
* **Alg. 1 speed**: crops/s of the real open_clip ViT-B-16 architecture (random weights: speed
  does not depend on weight values) on one 504x378 image (the dataset's ray resolution, ~3,400
  crops), through ``extract_pyramid`` with the teacher's CUDA settings (fp16 autocast) at the
  default batch of 512 crops and at 64;
* **CUDA tests**: the test suite's CUDA-only tests (gsplat against the torch rasterizer, the
  sparse convolution and ESGS on CUDA against the CPU), which skip on machines without CUDA, run
  in a subprocess started beside the extension checks; their pytest summary line is recorded;
* **training speed per phase**: the benchmark's ``gpu`` profile (the paper's settings) on the
  synthetic ``fruit_lawn`` scene at 1008x756 with fewer views (``--views``; speed per step does
  not depend on the view count), ms per step and peak ``torch.cuda.max_memory_allocated`` of
  each phase, once with one ray per FDA token (the default) and once with every pixel
  (``--compare-rays-per-token 8``), which may run out of memory: that is recorded too;
* **splat training speed per phase**: the same for ``ovs3d-splat`` at the profile's splat
  settings (50,000 initial Gaussians, gsplat on CUDA), one pixel per FDA token, started once the
  gsplat check has finished (it may use the whole budget) and only when gsplat works and
  ``--min-section-seconds`` are left (``--splat-steps``).

The results are written after every section, so a run cut short keeps what it measured. On a
machine without CUDA every section still runs at whatever size the options give (the test suite
runs it on CPU at a tiny size); the extension checks are then skipped with the reason.

    bash benchmarks/gpu_check.sh "$OUT/gpu_check.json"
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

# Runs as a script from any directory: make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.patch_rays import measure  # noqa: E402
from ovs3d_nerfstudio.data.procedural import render_scene  # noqa: E402
from ovs3d_nerfstudio.features.clip_pyramid import PyramidConfig, extract_pyramid  # noqa: E402
from benchmarks.lab.reports import code_version, machine_description  # noqa: E402
from ovs3d_nerfstudio.synthetic.profiles import PROFILES, SPLAT_METHOD, Profile  # noqa: E402
from ovs3d_nerfstudio.synthetic.scenes import scene_layouts, write_benchmark_scene  # noqa: E402
from ovs3d_nerfstudio.teachers.config import ClipTeacherConfig  # noqa: E402

TCNN_CHECK = """
import torch, tinycudann as tcnn
encoding = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2,
                             "log2_hashmap_size": 12, "base_resolution": 16, "per_level_scale": 1.5})
points = torch.rand(1024, 3, device="cuda", requires_grad=True)
encoding(points).float().square().sum().backward()
torch.cuda.synchronize()
print("tinycudann", tcnn.__file__)
"""

GSPLAT_CHECK = """
import torch, gsplat
n = 64
means = torch.randn(n, 3, device="cuda") * 0.3 + torch.tensor([0.0, 0.0, 3.0], device="cuda")
quats = torch.nn.functional.normalize(torch.randn(n, 4, device="cuda"), dim=-1)
scales = torch.full((n, 3), 0.05, device="cuda")
opacities = torch.full((n,), 0.8, device="cuda")
colors = torch.rand(n, 3, device="cuda")
viewmats = torch.eye(4, device="cuda")[None]
Ks = torch.tensor([[[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]]], device="cuda")
image, alpha, _ = gsplat.rasterization(means, quats, scales, opacities, colors, viewmats, Ks, 64, 64)
torch.cuda.synchronize()
print("gsplat", gsplat.__version__, tuple(image.shape), float(alpha.max()))
"""


class Budget:
    """Wall-clock deadline of the whole check; sections ask it before starting."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def start_extension_check(name: str, code: str) -> Dict[str, Any]:
    """Starts one import-and-run check in a subprocess (compilation may use 4 cores)."""
    if importlib.util.find_spec(name) is None:
        return {"usable": False, "detail": f"{name} is not installed"}
    env = dict(os.environ, MAX_JOBS="4")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return {"process": process, "started": time.monotonic()}


def wait_or_stop(check: Dict[str, Any], timeout: float) -> Optional[Tuple[str, str]]:
    """A started subprocess's (stdout, stderr) within ``timeout`` seconds, or None when it was
    still running and has been stopped."""
    process: subprocess.Popen = check["process"]
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None


def finish_extension_check(check: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """Waits up to ``timeout`` seconds for a started check; a check still running is stopped."""
    if "process" not in check:
        return check
    outputs = wait_or_stop(check, timeout)
    seconds = time.monotonic() - check["started"]
    if outputs is None:
        return {"usable": False, "detail": f"still running (building?) after {seconds:.0f} s; stopped"}
    stdout, stderr = outputs
    if check["process"].returncode == 0:
        return {"usable": True, "detail": stdout.strip().splitlines()[-1], "seconds": seconds}
    error = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"usable": False, "detail": f"exit status {check['process'].returncode}: {error}", "seconds": seconds}


CUDA_TESTS = (
    "tests/test_splat_rasterize.py::test_cpu_rules_match_gsplat_on_cuda",
    "tests/test_vlg_sparse_conv.py::test_convolutions_on_cuda_match_the_cpu_values_and_gradients",
    "tests/test_vlg_esgs.py::test_training_and_prediction_on_cuda_match_the_cpu",
)
"""The tests that only run with CUDA (each skips cleanly elsewhere)."""


def start_cuda_tests() -> Dict[str, Any]:
    """Starts pytest on :data:`CUDA_TESTS` in a subprocess, in the repository."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS]
    repository = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=repository, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return {"process": process, "started": time.monotonic()}


def finish_cuda_tests(check: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """pytest's exit status and summary line, or a note that it was stopped."""
    outputs = wait_or_stop(check, timeout)
    if outputs is None:
        return {"passed": False, "detail": f"still running after {time.monotonic() - check['started']:.0f} s; stopped"}
    lines = outputs[0].strip().splitlines() or ["no output"]
    status = check["process"].returncode
    return {"passed": status == 0, "exit_status": status, "summary": lines[-1], "tests": list(CUDA_TESTS)}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clip_extraction_speed(args: argparse.Namespace, device: str) -> Dict[str, Any]:
    """Alg. 1 crops/s with the open_clip architecture (random weights) at two batch sizes."""
    width, height = args.clip_image
    spec = scene_layouts()["fruit_lawn"](0, width=width, height=height, num_views=1)
    image = torch.from_numpy(render_scene(spec).images[0]).permute(2, 0, 1).float().div(255.0).to(device)
    result: Dict[str, Any] = {"model": args.clip_model, "weights": "random", "image": [width, height], "batches": {}}
    for batch_size in args.clip_batches:
        config = ClipTeacherConfig(
            model_name=args.clip_model, pretrained="random", model_config_path=args.clip_model_config, batch_size=batch_size
        )
        teacher = config.setup(device=device)
        teacher.encode_crops([image[:, :16, :16]] * 2)  # warm-up: kernels, allocator
        synchronize(device)
        start = time.perf_counter()
        pyramid = extract_pyramid(image, teacher, PyramidConfig(), batch_size)
        synchronize(device)
        seconds = time.perf_counter() - start
        crops = sum(boxes.shape[0] * boxes.shape[1] for boxes in pyramid.boxes)
        result["crops"] = crops
        result["batches"][str(batch_size)] = {"seconds": seconds, "crops_per_second": crops / seconds}
        del teacher
    result["fp16_autocast"] = device.startswith("cuda")
    return result


class CheckScene:
    """The profile with the check's view count (speed per step does not depend on it) and its
    fruit_lawn scene, written on first use and shared by the training sections."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.profile: Profile = dataclasses.replace(PROFILES[args.profile], num_views=args.views)
        self.root = args.workdir / "scene"
        self.seconds: Optional[float] = None
        self._path: Optional[Path] = None

    def path(self) -> Path:
        if self._path is None:
            start = time.perf_counter()
            profile = self.profile
            self._path = write_benchmark_scene("fruit_lawn", self.root, 0, profile.width, profile.height, profile.num_views)
            self.seconds = time.perf_counter() - start
        return self._path


def training_speed(
    args: argparse.Namespace, device: str, budget: Budget, save: Callable[[], None], into: Dict[str, Any], check: CheckScene
) -> None:
    """Per-phase speed and memory of the profile, default patch rays, then every pixel."""
    profile, scene = check.profile, check.path()
    into.update(
        profile=profile.name,
        image_size=[profile.width, profile.height],
        views=profile.num_views,
        tinycudann_installed=importlib.util.find_spec("tinycudann") is not None,
        scene_seconds=check.seconds,
    )
    runs = [(1, args.steps), (args.compare_rays_per_token, args.compare_steps)]
    for rays_per_token, steps in runs:
        key = f"rays_per_token_{rays_per_token}"
        if steps < 1 or budget.left() < args.min_section_seconds:
            into[key] = {"skipped": f"{steps} steps asked, {budget.left():.0f} s left"}
            continue
        reconstruction = steps if rays_per_token == 1 else 2  # reconstruction renders no patches
        try:
            into[key] = measure(profile, scene, args.workdir, rays_per_token, steps, args.skip, reconstruction)
        except torch.cuda.OutOfMemoryError as error:
            into[key] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        save()


def splat_training_speed(args: argparse.Namespace, device: str, budget: Budget, check: CheckScene) -> Dict[str, Any]:
    """Per-phase speed and memory of ``ovs3d-splat`` at the profile's splat settings."""
    if args.splat_steps < 1 or budget.left() < args.min_section_seconds:
        return {"skipped": f"{args.splat_steps} steps asked, {budget.left():.0f} s left"}
    try:
        return measure(check.profile, check.path(), args.workdir, 1, args.splat_steps, args.skip, args.splat_steps, SPLAT_METHOD)
    except torch.cuda.OutOfMemoryError as error:
        return {"error": f"out of memory: {str(error).splitlines()[0]}"}
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def run_section(name: str, results: Dict[str, Any], action: Callable[[], Any]) -> None:
    """Runs one section, keeping its error (one line) instead of losing the other sections."""
    start = time.perf_counter()
    try:
        value = action()
        if value is not None:
            results[name] = value
    except Exception as error:  # a broken section must not cost the others' results
        results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}".splitlines()[0]
    results.setdefault("section_seconds", {})[name] = time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (never overwritten)")
    parser.add_argument("--profile", default="gpu", choices=sorted(PROFILES))
    parser.add_argument("--views", type=int, default=8, help="views of the synthetic scene")
    parser.add_argument("--steps", type=int, default=30, help="steps of each phase, one ray per token")
    parser.add_argument("--compare-rays-per-token", type=int, default=8, help="the other patch setting (8: every pixel)")
    parser.add_argument("--compare-steps", type=int, default=8, help="steps of each segmentation phase for it (0: skip)")
    parser.add_argument("--splat-steps", type=int, default=30, help="steps of each phase of the ovs3d-splat run (0: skip)")
    parser.add_argument("--skip", type=int, default=3, help="first steps of each phase left out of the timing")
    parser.add_argument("--clip-model", default="ViT-B-16")
    parser.add_argument("--clip-model-config", type=Path, default=None, help="open_clip architecture JSON (tests)")
    parser.add_argument("--clip-image", type=int, nargs=2, default=(504, 378), metavar=("W", "H"))
    parser.add_argument("--clip-batches", type=int, nargs="+", default=(512, 64))
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole check")
    parser.add_argument("--min-section-seconds", type=float, default=60.0, help="a training run starts only with this much left")
    parser.add_argument("--workdir", type=Path, default=Path("outputs") / "gpu_check")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; give another --out (nothing is overwritten)")

    started = time.perf_counter()
    budget = Budget(args.budget)
    device = PROFILES[args.profile].overrides.get("machine.device_type", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"profile '{args.profile}' trains on CUDA, but torch sees no CUDA device")
    results: Dict[str, Any] = {
        "machine": machine_description(device),
        "torch_cuda": torch.version.cuda,
        "nvcc": shutil.which("nvcc"),
        "code": code_version(),
        "options": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        results["gpu_memory_gib"] = properties.total_memory / 2**30

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")

    checks: Dict[str, Dict[str, Any]] = {}
    cuda_tests: Dict[str, Any] = {}
    if torch.cuda.is_available():
        checks = {"tinycudann": start_extension_check("tinycudann", TCNN_CHECK), "gsplat": start_extension_check("gsplat", GSPLAT_CHECK)}
        cuda_tests = start_cuda_tests()
    else:
        results["extensions"] = {name: {"usable": False, "detail": "skipped: no CUDA device"} for name in ("tinycudann", "gsplat")}
        results["cuda_tests"] = {"passed": False, "detail": "skipped: no CUDA device", "tests": list(CUDA_TESTS)}
    save()
    run_section("clip_extraction", results, lambda: clip_extraction_speed(args, device))
    save()
    check = CheckScene(args)
    if check.profile.torch_threads is not None:
        torch.set_num_threads(check.profile.torch_threads)
    results["training"] = {}
    run_section("training", results, lambda: training_speed(args, device, budget, save, results["training"], check))
    save()
    gsplat: Dict[str, Any] = {"usable": True}  # without CUDA the splat model rasterizes in torch
    if checks:  # the splat run needs gsplat's kernels, which its check may still be building
        gsplat = finish_extension_check(checks.pop("gsplat"), budget.left())
        results["extensions"] = {"gsplat": gsplat}
    if gsplat["usable"]:
        run_section("splat_training", results, lambda: splat_training_speed(args, device, budget, check))
    else:
        results["splat_training"] = {"skipped": f"gsplat is not usable: {gsplat['detail']}"}
    save()
    if checks or cuda_tests:
        results["extensions"].update({name: finish_extension_check(check, budget.left()) for name, check in checks.items()})
        results["cuda_tests"] = finish_cuda_tests(cuda_tests, budget.left())
    results["total_seconds"] = time.perf_counter() - started
    save()
    print(json.dumps({key: results.get(key) for key in ("extensions", "cuda_tests", "clip_extraction", "errors")}, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
