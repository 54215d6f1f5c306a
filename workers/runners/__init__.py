"""Registry of runners by job kind, imported lazily (runners import torch).

Keyed by the ``KIND`` constants of the contracts modules, the kinds' one spelling
(tests/test_vocabulary.py checks that every kind of ``contracts.jobs.JOB_KINDS`` has a
runner here whose ``kind`` is its key)."""

from __future__ import annotations

import importlib

from contracts import distill, fcmi, label_issues, limit, sample_information, training_dynamics

from .base import JobContext, JobOutput, Runner, Unit

RUNNERS: dict[str, str] = {
    training_dynamics.KIND: "workers.runners.training_dynamics:TrainingDynamicsRunner",
    sample_information.KIND: "workers.runners.sample_information:SampleInformationRunner",
    fcmi.KIND: "workers.runners.fcmi:FcmiRunner",
    limit.KIND: "workers.runners.limit:LimitRunner",
    distill.COMPLEXITY_KIND: "workers.runners.distill:SupervisionComplexityRunner",
    distill.DISTILLATION_KIND: "workers.runners.distill:DistillationRunner",
    label_issues.KIND: "workers.runners.label_issues:LabelIssuesRunner",
}


def runner_class(kind: str) -> type[Runner]:
    """The runner class of ``kind`` (imports its module, and so torch)."""
    module_name, _, cls_name = RUNNERS[kind].partition(":")
    cls: type[Runner] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def get_runner(kind: str) -> Runner:
    return runner_class(kind)()


__all__ = ["RUNNERS", "JobContext", "JobOutput", "Runner", "Unit", "get_runner", "runner_class"]
