"""Dataparser for 3D-OVS scenes: LLFF-style folders or nerfstudio-format data, plus labels and masks.

Two layouts are detected automatically:

* **3D-OVS / LLFF** (SPEC section 3): ``images/``, ``poses_bounds.npy`` and
  ``segmentations/{classes.txt, <view index>/<label>.png}``.
* **nerfstudio** (``ns-process-data`` output): ``transforms.json``; cameras and images come
  from nerfstudio's own parser, labels from ``labels.txt`` (or
  ``segmentations/classes.txt``), masks optionally in the same ``segmentations/`` layout.

A *view index* is always the position of an image in the full, sorted image list; this is
how the 3D-OVS dataset names its mask folders. Every problem with the input raises one
:class:`Ovs3dDataError` (or :class:`~ovs3d_nerfstudio.data.labels.LabelError`) whose
message says what is wrong and how to fix it, instead of failing later inside training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE

from ovs3d_nerfstudio.data.labels import normalize_label, read_labels, validate_labels
from ovs3d_nerfstudio.errors import UserFacingError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MaskPaths = Dict[int, Dict[str, Path]]


class Ovs3dDataError(UserFacingError, ValueError):
    """The scene folder cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class Ovs3dDataParserConfig(DataParserConfig):
    """3D-OVS scene: LLFF-style (images/ + poses_bounds.npy) or nerfstudio-format (transforms.json) data with labels."""

    _target: Type = field(default_factory=lambda: Ovs3dDataParser)
    data: Path = Path()
    """Scene folder (or a transforms.json file). The layout is detected from its content."""
    labels: Tuple[str, ...] = ()
    """Text labels of the classes; when given, they replace the labels read from any file."""
    labels_file: Optional[Path] = None
    """File with one label per line, read instead of the scene's segmentations/classes.txt or labels.txt."""
    scene_scale: float = 1.0
    """Half size of the scene box (after pose normalisation)."""
    scale_factor: float = 1.0
    """Extra scale applied to the camera positions after auto scaling."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    """How to rotate the poses (nerfstudio's camera_utils.auto_orient_and_center_poses)."""
    center_method: Literal["poses", "focus", "none"] = "poses"
    """How to centre the poses (nerfstudio's camera_utils.auto_orient_and_center_poses)."""
    auto_scale_poses: bool = True
    """Scale the poses so that the largest camera coordinate is 1."""
    eval_mode: Literal["masks", "masks-held-out", "interval", "all"] = "masks"
    """How to split train and eval views.
    masks: views with ground-truth masks are the eval split; train uses ALL views, as 3D-OVS trains on every image.
    (Without any masks, eval takes every eval-interval-th view and train still uses all views.)
    masks-held-out: views with masks are the eval split and are left out of training (a held-out score).
    interval: every eval-interval-th view is held out for eval.
    all: every view is in both splits."""
    eval_interval: int = 8
    """Eval takes views 0, k, 2k, ... with this k (eval modes 'interval', and 'masks' without masks)."""
    downscale_factor: float = 1.0
    """Views are served to ns-eval, ns-render and the viewer at 1/this resolution (set by
    `ns-render dataset --downscale-factor`). Training rays and patches have their own
    factors (ray-downscale, patch-downscale) and always read the full-resolution images."""


@dataclass
class _Scene:
    """Every view of the scene, before the split."""

    image_filenames: List[Path]
    cameras: Cameras
    transform: Float[Tensor, "3 4"]
    scale: float
    near_far: Optional[Float[Tensor, "N 2"]]
    extra_metadata: Dict[str, Any]
    """nerfstudio-format extras (depth files, point cloud, alpha masks) kept for the outputs."""
    alpha_mask_filenames: Optional[List[Path]]
    labels_default: List[Path]
    """Label files the layout provides, in order of preference."""


@dataclass
class Ovs3dDataParser(DataParser):
    """Parses a 3D-OVS scene into cameras, images, labels and ground-truth mask paths.

    ``metadata`` of the outputs:

    * ``labels``: ``List[str]``, the classes in display order.
    * ``mask_paths``: ``Dict[int, Dict[str, Path]]``, index *within this split* -> label -> mask.
    * ``near_far``: ``Tensor[num_split_images, 2]`` LLFF depth bounds in the output scale, or
      ``None`` for nerfstudio-format data (which has no bounds). The camera paths aim at a
      depth between them; ray sampling does not use them (docs/data.md says why).
    """

    config: Ovs3dDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs: Any) -> DataparserOutputs:
        data = Path(self.config.data)
        if not data.exists():
            raise Ovs3dDataError(f"Data folder {data} does not exist. Pass the scene folder with --data.")
        if data.suffix == ".json" or (data / "transforms.json").exists():
            scene = self._load_nerfstudio(data)
            root = data.parent if data.suffix == ".json" else data
        elif (data / "poses_bounds.npy").exists():
            scene = self._load_llff(data)
            root = data
        else:
            raise Ovs3dDataError(
                f"{data} holds neither poses_bounds.npy (3D-OVS / LLFF layout) nor transforms.json "
                "(nerfstudio layout, from ns-process-data). Point --data at a scene folder with one of them."
            )

        labels = self.resolve_labels(scene.labels_default)
        image_sizes = [_image_size(path) for path in scene.image_filenames]
        mask_paths_by_view = _find_masks(root / "segmentations", labels, image_sizes, scene.image_filenames)
        indices = self._split_indices(split, len(scene.image_filenames), sorted(mask_paths_by_view))

        index_tensor = torch.tensor(indices, dtype=torch.long)
        metadata = dict(scene.extra_metadata)
        if "depth_filenames" in metadata:
            metadata["depth_filenames"] = [metadata["depth_filenames"][i] for i in indices]
        metadata.update(
            labels=labels,
            mask_paths={
                position: mask_paths_by_view[view]
                for position, view in enumerate(indices)
                if view in mask_paths_by_view
            },
            near_far=scene.near_far[index_tensor] if scene.near_far is not None else None,
        )
        aabb = self.config.scene_scale
        return DataparserOutputs(
            image_filenames=[scene.image_filenames[i] for i in indices],
            cameras=scene.cameras[index_tensor],
            scene_box=SceneBox(aabb=torch.tensor([[-aabb] * 3, [aabb] * 3], dtype=torch.float32)),
            mask_filenames=(
                [scene.alpha_mask_filenames[i] for i in indices] if scene.alpha_mask_filenames else None
            ),
            dataparser_scale=scene.scale,
            dataparser_transform=scene.transform,
            metadata=metadata,
        )

    def _load_llff(self, root: Path) -> _Scene:
        """Reads images/ and poses_bounds.npy; normalises poses like nerfstudio's own parsers."""
        image_dir = root / "images"
        image_filenames = (
            sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if image_dir.is_dir() else []
        )
        if not image_filenames:
            raise Ovs3dDataError(
                f"No images in {image_dir}. Put the views there as .jpg or .png files; "
                "their sorted order is the view index."
            )
        sizes = [_image_size(path) for path in image_filenames]
        for path, size in zip(image_filenames, sizes):
            if size != sizes[0]:
                raise Ovs3dDataError(
                    f"Images differ in size: {image_filenames[0].name} is {sizes[0][0]}x{sizes[0][1]} but "
                    f"{path.name} is {size[0]}x{size[1]} (width x height). All views must have one size; resize them."
                )
        width, height = sizes[0]

        poses_bounds = np.load(root / "poses_bounds.npy")
        if poses_bounds.ndim != 2 or poses_bounds.shape[1] != 17:
            raise Ovs3dDataError(
                f"poses_bounds.npy has shape {list(poses_bounds.shape)}, expected [N, 17] (LLFF: a 3x5 "
                "[rotation | translation | height width focal] matrix flattened, then near and far)."
            )
        if len(poses_bounds) != len(image_filenames):
            raise Ovs3dDataError(
                f"poses_bounds.npy has {len(poses_bounds)} poses but {image_dir} has {len(image_filenames)} "
                "images. They must match one to one, in sorted file-name order."
            )
        llff = poses_bounds[:, :15].reshape(-1, 3, 5)
        # LLFF rotation columns are [down, right, backwards]; nerfstudio wants [right, up, backwards].
        c2w = np.concatenate([llff[:, :, 1:2], -llff[:, :, 0:1], llff[:, :, 2:4]], axis=-1)
        hwf_height, hwf_width, focal = llff[:, 0, 4], llff[:, 1, 4], llff[:, 2, 4]

        poses = torch.eye(4).repeat(len(c2w), 1, 1)
        poses[:, :3, :] = torch.from_numpy(c2w.astype(np.float32))
        poses, transform = camera_utils.auto_orient_and_center_poses(
            poses, method=self.config.orientation_method, center_method=self.config.center_method
        )
        scale = self.config.scale_factor
        if self.config.auto_scale_poses:
            scale /= float(torch.max(torch.abs(poses[:, :3, 3])))
        poses[:, :3, 3] *= scale

        # hwf is the resolution the poses were estimated at; the images may have been resized since.
        cameras = Cameras(
            camera_to_worlds=poses[:, :3, :4],
            fx=torch.from_numpy((focal * width / hwf_width).astype(np.float32))[:, None],
            fy=torch.from_numpy((focal * height / hwf_height).astype(np.float32))[:, None],
            cx=width / 2.0,
            cy=height / 2.0,
            width=width,
            height=height,
            camera_type=CameraType.PERSPECTIVE,
        )
        return _Scene(
            image_filenames=image_filenames,
            cameras=cameras,
            transform=transform,
            scale=scale,
            near_far=torch.from_numpy(poses_bounds[:, 15:17].astype(np.float32)) * scale,
            extra_metadata={},
            alpha_mask_filenames=None,
            labels_default=[root / "segmentations" / "classes.txt"],
        )

    def _load_nerfstudio(self, data: Path) -> _Scene:
        """Lets nerfstudio's parser read transforms.json (all frames), keeping its pose normalisation."""
        transforms = data if data.suffix == ".json" else data / "transforms.json"
        meta = json.loads(transforms.read_text(encoding="utf-8"))
        listed = [key for key in ("train_filenames", "val_filenames", "test_filenames") if key in meta]
        if listed:
            raise Ovs3dDataError(
                f"{transforms} fixes the split with {', '.join(listed)}, but view indices and mask folders "
                "refer to the full image list. Remove those keys and choose the split with --eval-mode."
            )
        # train_split_fraction 1.0 gives every frame, in nerfstudio's sorted order, as "train".
        parser = NerfstudioDataParserConfig(
            data=data,
            scale_factor=self.config.scale_factor,
            scene_scale=self.config.scene_scale,
            orientation_method=self.config.orientation_method,
            center_method=self.config.center_method,
            auto_scale_poses=self.config.auto_scale_poses,
            eval_mode="fraction",
            train_split_fraction=1.0,
            # Full-resolution images/ always: ray-downscale and patch-downscale are relative to
            # them (as for LLFF scenes), and masks are drawn at that resolution.
            downscale_factor=1,
        ).setup()
        outputs = parser.get_dataparser_outputs("train")
        extra = {key: value for key, value in outputs.metadata.items() if value is not None}
        root = transforms.parent
        return _Scene(
            image_filenames=list(outputs.image_filenames),
            cameras=outputs.cameras,
            transform=outputs.dataparser_transform,
            scale=float(outputs.dataparser_scale),
            near_far=None,
            extra_metadata=extra,
            alpha_mask_filenames=outputs.mask_filenames,
            labels_default=[root / "labels.txt", root / "segmentations" / "classes.txt"],
        )

    def resolve_labels(self, layout_files: Sequence[Path]) -> List[str]:
        """The scene's labels from the first source that is set (docs/data.md#labels):

        1. ``--pipeline.model.labels`` (the datamanager passes them on as this config's ``labels``);
        2. ``ovs3d-data --labels``;
        3. ``ovs3d-data --labels-file``;
        4. the first label file of the layout that exists (``labels.txt``, ``segmentations/classes.txt``).

        File order is kept for display (the official code sorts classes.txt alphabetically);
        the argmax evaluation does not depend on the order.
        """
        if self.config.labels:
            return validate_labels(self.config.labels, "the 'labels' option")
        if self.config.labels_file is not None:
            path = Path(self.config.labels_file)
            if not path.is_file():
                raise Ovs3dDataError(f"labels_file {path} does not exist. Fix the path or leave it unset.")
            return validate_labels(read_labels(path), str(path))
        for path in layout_files:
            if path.is_file():
                return validate_labels(read_labels(path), str(path))
        raise Ovs3dDataError(
            "The scene has no labels. Give them in one of three ways: write "
            f"{' or '.join(str(p) for p in layout_files)} with one label per line; add --labels-file FILE after "
            "'ovs3d-data'; or pass --pipeline.model.labels 'red apple' 'wood wall' ... (before 'ovs3d-data')."
        )

    def _split_indices(self, split: str, num_views: int, mask_views: List[int]) -> List[int]:
        """View indices of ``split``; 'masks' trains on every view and evaluates the annotated ones,
        'masks-held-out' trains on the others."""
        if split not in ("train", "val", "test"):
            raise Ovs3dDataError(f"Unknown split '{split}'; expected train, val or test.")
        every = list(range(num_views))
        interval = list(range(0, num_views, self.config.eval_interval))
        mode = self.config.eval_mode
        if mode == "all":
            return every
        if mode == "interval":
            return interval if split != "train" else [i for i in every if i % self.config.eval_interval != 0]
        if mode == "masks-held-out":
            if not mask_views:
                raise Ovs3dDataError(
                    "eval-mode 'masks-held-out' holds the annotated views out of training, but the scene has no "
                    "ground-truth masks (segmentations/<view index>/<label>.png). Add masks or use --eval-mode interval."
                )
            if len(mask_views) == num_views:
                raise Ovs3dDataError(
                    f"eval-mode 'masks-held-out' would leave no view to train on: all {num_views} views have masks. "
                    "Use --eval-mode masks (train on every view) or --eval-mode interval."
                )
            return mask_views if split != "train" else [i for i in every if i not in set(mask_views)]
        if split == "train":
            return every
        if not mask_views:
            CONSOLE.log(
                "[yellow]eval-mode 'masks' but the scene has no ground-truth masks: "
                f"evaluating on every {self.config.eval_interval}th view instead (no mIoU without masks)."
            )
            return interval
        return mask_views


def _image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise Ovs3dDataError(f"Cannot read image {path}: {error}. Replace or remove the file.") from error


def _find_masks(
    segmentation_dir: Path,
    labels: List[str],
    image_sizes: List[Tuple[int, int]],
    image_filenames: List[Path],
) -> MaskPaths:
    """Maps view index -> label -> mask file, checking folder names, label names and sizes.

    Mask files are matched to labels ignoring case and repeated spaces (the same rule that
    forbids duplicate labels). A view may lack some labels' masks; consumers treat a missing
    mask as empty.
    """
    if not segmentation_dir.is_dir():
        return {}
    by_key = {normalize_label(label): label for label in labels}
    masks: MaskPaths = {}
    for folder in sorted(p for p in segmentation_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            view = int(folder.name)
        except ValueError:
            raise Ovs3dDataError(
                f"Mask folder {folder} is not named by a view index. Name it by the index of its image in the "
                f"sorted image list (0..{len(image_sizes) - 1}), e.g. '00'."
            ) from None
        if not 0 <= view < len(image_sizes):
            raise Ovs3dDataError(
                f"Mask folder {folder} names view {view}, but the scene has only {len(image_sizes)} images "
                f"(views 0..{len(image_sizes) - 1}). Rename or remove the folder."
            )
        view_masks: Dict[str, Path] = {}
        for mask in sorted(folder.iterdir()):
            if mask.suffix.lower() != ".png" or mask.name.startswith("."):
                continue
            label = by_key.get(normalize_label(mask.stem))
            if label is None:
                raise Ovs3dDataError(
                    f"Mask {mask} names the label '{mask.stem}', which is not one of the scene's labels "
                    f"{labels}. Rename the file to '<label>.png' or add the label."
                )
            if label in view_masks:
                raise Ovs3dDataError(
                    f"Masks {view_masks[label].name} and {mask.name} in {folder} both name the label '{label}'. "
                    "Keep one of them."
                )
            size = _image_size(mask)
            if size != image_sizes[view]:
                raise Ovs3dDataError(
                    f"Mask {mask} is {size[0]}x{size[1]} but its image {image_filenames[view].name} is "
                    f"{image_sizes[view][0]}x{image_sizes[view][1]} (width x height). Masks must have the image size."
                )
            view_masks[label] = mask
        if view_masks:
            masks[view] = {label: view_masks[label] for label in labels if label in view_masks}
    return masks
