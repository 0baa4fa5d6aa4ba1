"""The ovs3d pipeline: nerfstudio's VanillaPipeline plus the wiring between model options and data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Type

from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from ovs3d_nerfstudio.config_checks import check_pipeline_config
from ovs3d_nerfstudio.evaluation import per_class_iou

from ovs3d_nerfstudio.data.datamanager import Ovs3dDataManagerConfig
from ovs3d_nerfstudio.model import Ovs3dModelConfig
from ovs3d_nerfstudio.process import prepare_ovs3d_process
from ovs3d_nerfstudio.schedule import TRAINABLE, Phase
from ovs3d_nerfstudio.variants import resolve_options
from ovs3d_nerfstudio.viewer import SegmentationPanel


@dataclass
class Ovs3dPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: Ovs3dPipeline)
    datamanager: Ovs3dDataManagerConfig = field(default_factory=Ovs3dDataManagerConfig)
    model: Ovs3dModelConfig = field(default_factory=Ovs3dModelConfig)


class Ovs3dPipeline(VanillaPipeline):
    """Wires model options to the data side: ``--pipeline.model.labels`` overrides the labels
    file, the RDA/FDA switches decide whether relevancy maps and patches are prepared, and
    the datamanager learns when segmentation starts (reconstruction batches skip targets).
    Every ovs3d option is checked first (``config_checks``), so a bad value stops the run
    with one line before data, teachers or model are built."""

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
        prepare_ovs3d_process()  # here, not at import: see process.py
        check_pipeline_config(config)
        if config.model.labels and hasattr(config.datamanager.dataparser, "labels"):
            config.datamanager.dataparser.labels = tuple(config.model.labels)
        config.datamanager.variant = config.model.variant
        config.datamanager.serve_relevancy = config.model.use_rda
        config.datamanager.serve_patches = config.model.use_fda
        config.datamanager.serve_selection_targets = config.model.use_selection and (
            resolve_options(config.model.variant, selection_training=config.model.selection_training).selection_training
            == "dino-purity"
        )
        config.datamanager.selection_target_shift = config.model.fda_shift
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.datamanager.segmentation_start = config.model.schedule.reconstruction_steps
        # nerfstudio's viewer installs the GUI elements it finds on the pipeline's modules.
        self.segmentation_panel = SegmentationPanel(self.model)

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
        trained = {id(p) for group in TRAINABLE[Phase.RECONSTRUCTION] for p in model.get_param_groups()[group]}
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
