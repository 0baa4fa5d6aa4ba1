"""The ``ovs3d-splat`` pipeline: the ``ovs3d`` pipeline with the Gaussian datamanager and model.

Teachers, targets, option checks, checkpoint matching and ns-eval's per-class averages are the
NeRF pipeline's; this one adds the Gaussians' initial points and the splat model's checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Type

from torch import Tensor

from ovs3d_nerfstudio.config_checks import datamanager_problems, raise_if_any
from ovs3d_nerfstudio.pipeline import Ovs3dPipeline, Ovs3dPipelineConfig
from ovs3d_nerfstudio.splat.datamanager import Ovs3dSplatDataManager, Ovs3dSplatDataManagerConfig
from ovs3d_nerfstudio.splat.model import Ovs3dSplatModelConfig, splat_model_problems


@dataclass
class Ovs3dSplatPipelineConfig(Ovs3dPipelineConfig):
    _target: Type = field(default_factory=lambda: Ovs3dSplatPipeline)
    datamanager: Ovs3dSplatDataManagerConfig = field(default_factory=Ovs3dSplatDataManagerConfig)
    model: Ovs3dSplatModelConfig = field(default_factory=Ovs3dSplatModelConfig)


class Ovs3dSplatPipeline(Ovs3dPipeline):
    """See the module docstring."""

    config: Ovs3dSplatPipelineConfig
    datamanager: Ovs3dSplatDataManager

    @staticmethod
    def check_config(config: Ovs3dPipelineConfig) -> None:
        raise_if_any(datamanager_problems(config.datamanager) + splat_model_problems(config.model))

    def model_arguments(self) -> Dict:
        return {"seed_points": self.datamanager.initial_points(self.config.model.num_random)}

    def keep_untrained_initial_values(self, state: Dict[str, Tensor], step: int) -> Dict[str, Tensor]:
        """As the NeRF pipeline's, except that per-Gaussian values always come from the
        checkpoint: its number of Gaussians (densification) sizes all of them together."""
        kept = super().keep_untrained_initial_values(state, step)
        return {key: state[key] if key.startswith("_model.gauss_params.") else value for key, value in kept.items()}
