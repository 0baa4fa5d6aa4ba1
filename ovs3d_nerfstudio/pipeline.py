"""The ovs3d pipeline: builds the teachers, the datamanager and the model, and wires the model's options to the data."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Type

import torch.distributed as dist
from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig

from ovs3d_nerfstudio.config_checks import check_pipeline_config
from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManager, Ovs3dDataManagerConfig, TrainingTargets
from ovs3d_nerfstudio.evaluation import per_class_iou
from ovs3d_nerfstudio.model import Ovs3dModelConfig
from ovs3d_nerfstudio.process import prepare_ovs3d_process
from ovs3d_nerfstudio.schedule import Phase
from ovs3d_nerfstudio.teachers.shared import Teachers
from ovs3d_nerfstudio.variants import resolve_options
from ovs3d_nerfstudio.viewer import SegmentationPanel


@dataclass
class Ovs3dPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: Ovs3dPipeline)
    datamanager: Ovs3dDataManagerConfig = field(default_factory=Ovs3dDataManagerConfig)
    model: Ovs3dModelConfig = field(default_factory=Ovs3dModelConfig)


def training_targets(model: Ovs3dModelConfig) -> TrainingTargets:
    """What the datamanager must serve for the model's options (losses switched off need nothing)."""
    options = resolve_options(model.variant, selection_training=model.selection_training)
    return TrainingTargets(
        variant=model.variant,
        relevancy=model.use_rda,
        patches=model.use_fda,
        selection_targets=model.use_selection and options.selection_training == "dino-purity",
        selection_target_shift=model.fda_shift,
    )


class Ovs3dPipeline(VanillaPipeline):
    """Builds the teachers once and hands them, with what each needs from the model's options,
    to the datamanager and the model (as LERF's pipeline does): the targets to serve (the RDA /
    FDA / selection switches), the step where segmentation starts (reconstruction batches skip
    targets) and ``--pipeline.model.labels``. Every ovs3d option is checked first
    (``config_checks``), so a bad value stops the run with one line before data, teachers or
    model are built."""

    config: Ovs3dPipelineConfig

    def __init__(
        self,
        config: Ovs3dPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        # VanillaPipeline's constructor builds datamanager and model without our arguments, so
        # this one builds them itself, in the same order and with the same nerfstudio arguments.
        Pipeline.__init__(self)
        prepare_ovs3d_process()  # here, not at import: see process.py
        self.check_config(config)
        self.config = config
        self.test_mode = test_mode
        self.world_size = world_size
        self.teachers = Teachers(config.datamanager.clip, config.datamanager.dino, device)
        self.datamanager: Ovs3dDataManager = config.datamanager.setup(
            device=device,
            test_mode=test_mode,
            world_size=world_size,
            local_rank=local_rank,
            teachers=self.teachers,
            targets=training_targets(config.model),
            segmentation_start=config.model.schedule.reconstruction_steps,
            labels=config.model.labels,
        )
        self.datamanager.to(device)
        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata=self.datamanager.train_dataset.metadata,
            device=device,
            grad_scaler=grad_scaler,
            teachers=self.teachers,
            **self.model_arguments(),
        )
        self.model.to(device)
        if world_size > 1:
            self._model = typing.cast(Model, DDP(self._model, device_ids=[local_rank], find_unused_parameters=True))
            dist.barrier(device_ids=[local_rank])
        # nerfstudio's viewer installs the GUI elements it finds on the pipeline's modules.
        self.segmentation_panel = SegmentationPanel(self.model)

    @staticmethod
    def check_config(config: Ovs3dPipelineConfig) -> None:
        """Refuses bad option values with one line (``config_checks``)."""
        check_pipeline_config(config)

    def model_arguments(self) -> Dict:
        """Extra arguments of the model's constructor, from the datamanager (none for the NeRF variant)."""
        return {}

    def load_pipeline(self, loaded_state, step: int) -> None:
        state = {key.removeprefix("module."): value for key, value in loaded_state.items()}
        self.model.match_checkpoint(state)
        super().load_pipeline(self.keep_untrained_initial_values(state, step), step)

    def keep_untrained_initial_values(self, state: Dict[str, Tensor], step: int) -> Dict[str, Tensor]:
        """``state`` with this model's own values for the parameters a reconstruction-phase
        checkpoint never trained (selection volume, CLIP head) where their shapes differ.

        So a reconstruction checkpoint (``--load-checkpoint``) starts any segmentation set-up,
        e.g. one with another number of scales. Any other mismatch is left for
        ``load_state_dict`` to refuse.
        """
        if self.model.config.schedule.phase(step) is not Phase.RECONSTRUCTION:
            return state
        model = self.model
        groups = model.get_param_groups()
        trained = {id(p) for group in model.config.schedule.trainable(Phase.RECONSTRUCTION) for p in groups.get(group, [])}
        current = self.state_dict()
        untrained = {f"_model.{name}" for name, p in model.named_parameters() if id(p) not in trained}
        return {
            key: current[key] if key in untrained and key in current and current[key].shape != value.shape else value
            for key, value in state.items()
        }

    def get_average_image_metrics(
        self, data_loader, image_prefix: str, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ):
        """ns-eval's averages, with per-class counts turned into scene-level ``iou/<label>``.

        With ``ns-eval --render-output-path DIR`` the predicted label images (``labels``,
        ``labels_overlay``) are written there too.
        """
        return per_class_iou(super().get_average_image_metrics(data_loader, image_prefix, step, output_path, get_std))
