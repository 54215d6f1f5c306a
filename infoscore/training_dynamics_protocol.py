"""The ``training-dynamics`` job as one library call: :func:`training_dynamics` on a dataset.

One seeded model, one training run with cross-entropy, and the baseline per-sample scores
of :mod:`infoscore.scores` (loss, margin, EL2N, GraNd, forgetting events;
docs/jobs/training-dynamics.md). The service's job runs exactly this call, so a notebook
gets the job's numbers for the same seed::

    import infoscore
    from infoscore.data import load_digits
    ds = load_digits(label_noise=0.2)
    res = infoscore.training_dynamics(ds, {"arch": "mlp"}, infoscore.TrainingDynamicsConfig(seed=0))
    res.summary()["auroc_noisy"]["el2n"], res.table().head()

The settings are in :mod:`infoscore.training_dynamics_config`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from .config_checks import model_spec
from .data import Dataset
from .errors import invalid
from .models import build_model
from .progress import ProgressFn, StopFn
from .scores import TrainingDynamicsResult
from .scores import training_dynamics as score_training_run
from .training import as_tensor
from .training_dynamics_config import TrainingDynamicsConfig


def training_dynamics(
    dataset: Dataset,
    model: Mapping[str, Any] | None = None,
    config: TrainingDynamicsConfig = TrainingDynamicsConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TrainingDynamicsResult:
    """Train the seeded ``model`` (a :func:`infoscore.models.build_model` spec; None = the
    default MLP) on ``dataset``'s training split and score every training sample.

    Returns :class:`infoscore.scores.TrainingDynamicsResult`: ``table()`` is the job's
    per-sample table (loss, margin, el2n, grand, forgetting_events, never_learned, in
    dataset order), ``summary()`` its summary (with ``auroc_noisy`` when the dataset knows
    which labels were flipped). ``progress(epoch, epochs)`` runs after each epoch;
    ``should_stop()`` is checked before each epoch and raises ``Cancelled``.
    """
    if not isinstance(config, TrainingDynamicsConfig):
        raise invalid("config", "training_dynamics", "a TrainingDynamicsConfig", type(config).__name__)
    spec = model_spec(model, "training_dynamics")
    started = time.perf_counter()

    dev = torch.device(device)
    ds = dataset
    net = build_model(spec, ds.input_shape, ds.n_classes, seed=config.seed).to(dev)
    dtype = next(net.parameters()).dtype
    has_test = ds.n_test > 0
    assert config.el2n_epoch is not None  # resolved in __post_init__
    result = score_training_run(
        net,
        as_tensor(ds.x_train, dev, dtype),
        as_tensor(ds.y_train, dev, torch.int64),
        as_tensor(ds.x_test, dev, dtype) if has_test else None,
        as_tensor(ds.y_test, dev, torch.int64) if has_test else None,
        epochs=config.epochs,
        el2n_epoch=config.el2n_epoch,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        seed=config.seed,
        progress=progress,
        should_stop=should_stop,
    )
    result.settings = {**asdict(config), "model": spec, "n_train": ds.n_train, "n_test": ds.n_test}
    result.noisy_mask = ds.noisy_mask
    result.seconds = time.perf_counter() - started
    return result
