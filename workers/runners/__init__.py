"""Registry of runners by job kind, imported lazily (runners import torch)."""

from __future__ import annotations

import importlib

from .base import JobContext, JobOutput, Runner, Unit

RUNNERS: dict[str, str] = {
    "training-dynamics": "workers.runners.training_dynamics:TrainingDynamicsRunner",
    "sample-information": "workers.runners.sample_information:SampleInformationRunner",
    "fcmi-bound": "workers.runners.fcmi:FcmiRunner",
    "limit": "workers.runners.limit:LimitRunner",
    "supervision-complexity": "workers.runners.distill:SupervisionComplexityRunner",
    "distillation": "workers.runners.distill:DistillationRunner",
    "label-issues": "workers.runners.label_issues:LabelIssuesRunner",
}


def get_runner(kind: str) -> Runner:
    module_name, _, cls_name = RUNNERS[kind].partition(":")
    module = importlib.import_module(module_name)
    runner: Runner = getattr(module, cls_name)()
    return runner


__all__ = ["RUNNERS", "JobContext", "JobOutput", "Runner", "Unit", "get_runner"]
