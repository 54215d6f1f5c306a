"""infoscore: how much each training sample matters, and how well a model generalizes.

The science library of the infoscore service (arXiv 2306.15918). It imports torch and
numpy only and reads no environment variables.

One call per job kind, each ``(dataset, model, config, *, device, progress, should_stop)``
with a typed config and result: :func:`training_dynamics`, :func:`sample_information`,
:func:`fcmi_bound`, :func:`limit`, :func:`label_issues`, :func:`supervision_complexity`,
:func:`distillation` (configs in the torch-free ``<kind>_config`` modules; ``import
infoscore`` loads neither torch nor numpy, the calls load on first use). Submodules by
role: ``data``, ``models``, ``training``, ``scores``, ``ntk``, ``projection``,
``linearized``, ``sample_info``, ``fcmi``, ``limit``, ``label_issues``, ``distill``.
"""

from typing import TYPE_CHECKING

from .errors import Cancelled, InfoscoreError, InvalidInputError, NumericalError

if TYPE_CHECKING:
    from .distill_config import DistillationConfig as DistillationConfig
    from .distill_config import SupervisionComplexityConfig as SupervisionComplexityConfig
    from .distill_protocol import DistillationResult as DistillationResult
    from .distill_protocol import SupervisionComplexityResult as SupervisionComplexityResult
    from .distill_protocol import distillation as distillation
    from .distill_protocol import supervision_complexity as supervision_complexity
    from .fcmi import FcmiResult as FcmiResult
    from .fcmi import fcmi_bound as fcmi_bound
    from .fcmi_config import FcmiConfig as FcmiConfig
    from .label_issues import LabelIssues as LabelIssues
    from .label_issues import LabelIssuesResult as LabelIssuesResult
    from .label_issues import find_label_issues as find_label_issues
    from .label_issues import label_issues as label_issues
    from .label_issues_config import LabelIssuesConfig as LabelIssuesConfig
    from .limit import LimitResult as LimitResult
    from .limit import limit as limit
    from .limit_config import LimitConfig as LimitConfig
    from .sample_information_config import GroundTruthConfig as GroundTruthConfig
    from .sample_information_config import LinearizationCheckpoint as LinearizationCheckpoint
    from .sample_information_config import SampleInformationConfig as SampleInformationConfig
    from .sample_information_protocol import SampleInformationResult as SampleInformationResult
    from .sample_information_protocol import sample_information as sample_information
    from .scores import TrainingDynamicsResult as TrainingDynamicsResult
    from .training_dynamics_config import TrainingDynamicsConfig as TrainingDynamicsConfig
    from .training_dynamics_protocol import training_dynamics as training_dynamics

__version__ = "0.1.0"

__all__ = ["Cancelled", "InfoscoreError", "InvalidInputError", "NumericalError", "__version__"]

# Loaded on first use, so ``import infoscore`` (e.g. for its errors) does not load torch.
_LAZY = {
    "training_dynamics": "training_dynamics_protocol",
    "TrainingDynamicsConfig": "training_dynamics_config",
    "TrainingDynamicsResult": "scores",
    "sample_information": "sample_information_protocol",
    "SampleInformationConfig": "sample_information_config",
    "SampleInformationResult": "sample_information_protocol",
    "GroundTruthConfig": "sample_information_config",
    "LinearizationCheckpoint": "sample_information_config",
    "find_label_issues": "label_issues",
    "LabelIssuesConfig": "label_issues_config",
    "LabelIssues": "label_issues",
    "supervision_complexity": "distill_protocol",
    "SupervisionComplexityConfig": "distill_config",
    "SupervisionComplexityResult": "distill_protocol",
    "distillation": "distill_protocol",
    "DistillationConfig": "distill_config",
    "DistillationResult": "distill_protocol",
    "fcmi_bound": "fcmi",
    "FcmiConfig": "fcmi_config",
    "FcmiResult": "fcmi",
    "label_issues": "label_issues",
    "LabelIssuesResult": "label_issues",
    "limit": "limit",
    "LimitConfig": "limit_config",
    "LimitResult": "limit",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
