"""The ``training-dynamics`` job as one library call: :func:`training_dynamics` on a dataset.

One seeded model, one training run with cross-entropy, and the baseline per-sample scores
of :mod:`infoscore.scores` (loss, margin, EL2N, GraNd, forgetting events;
docs/jobs/training-dynamics.md). The service's job runs exactly this call, so a notebook
gets the job's numbers for the same seed::

    import infoscore
    ds = infoscore.data.load_digits(label_noise=0.2)
    res = infoscore.training_dynamics(ds, {"arch": "mlp"}, infoscore.TrainingDynamicsConfig(seed=0))
    res.summary()["auroc_noisy"]["el2n"], res.table().head()

Importing this module (and so :class:`TrainingDynamicsConfig`) does not load torch: the
call imports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from .errors import invalid

if TYPE_CHECKING:
    import torch

    from .data import Dataset
    from .progress import ProgressFn, StopFn
    from .scores import TrainingDynamicsResult

Optimizer = Literal["adam", "sgd"]
EL2N_EPOCH_DEFAULT = 5
# The model of a library call that names none: the service's default MLP, spelled out in
# full so that ``settings["model"]`` reads as a job's does.
DEFAULT_MODEL: dict[str, Any] = {
    "arch": "mlp",
    "hidden": [256],
    "activation": "relu",
    "batchnorm": False,
    "dropout": 0.0,
}


def model_spec(model: Mapping[str, Any] | None, caller: str) -> dict[str, Any]:
    """The spec dict of :func:`infoscore.models.build_model`; None = :data:`DEFAULT_MODEL`."""
    if model is None:
        return {k: list(v) if isinstance(v, list) else v for k, v in DEFAULT_MODEL.items()}
    if not isinstance(model, Mapping):
        raise invalid("model", caller, "a model spec mapping such as {'arch': 'mlp'} or None", model)
    return dict(model)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


@dataclass(frozen=True)
class TrainingDynamicsConfig:
    """Settings of :func:`training_dynamics`; the fields and defaults are the job's params
    (``contracts.training_dynamics``), plus ``seed``.

    Defaults and why (measured on digits with 20% uniform label noise and the default MLP,
    docs/jobs/training-dynamics.md "Measured"):

    * ``epochs = 30``: about 1 s of training on one CPU thread, and it stops before the
      MLP memorizes the flipped labels (train accuracy about 0.8 on the noisy labels; at
      200 epochs the final ``loss`` AUROC fell from 0.998 to 0.978).
    * ``batch_size = 64``, ``lr = 1e-3``, ``optimizer = "adam"``, ``weight_decay = 0.0``:
      the project's training recipe (:func:`infoscore.training.train_classifier`); ``sgd``
      uses momentum 0.9.
    * ``el2n_epoch = None`` means min(5, ``epochs``) and is resolved on construction (the
      instance always holds an int): at epoch 5 GraNd's AUROC is about 0.99 against 0.98
      at epoch 3, at no cost; EL2N 0.993-0.996 over seeds 0-4. 0 = at initialisation.
    * ``seed = 0``: the model's initialisation and the mini-batch order.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Optimizer = "adam"
    weight_decay: float = 0.0
    el2n_epoch: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        caller = "TrainingDynamicsConfig"
        if not _is_int(self.epochs) or self.epochs < 1:
            raise invalid("epochs", caller, "an integer >= 1", self.epochs)
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise invalid("batch_size", caller, "an integer >= 1", self.batch_size)
        if not _is_positive(self.lr):
            raise invalid("lr", caller, "a float in (0, inf)", self.lr)
        if self.optimizer not in get_args(Optimizer):
            raise invalid("optimizer", caller, f"one of {list(get_args(Optimizer))}", self.optimizer)
        wd = self.weight_decay
        if not (isinstance(wd, int | float) and not isinstance(wd, bool) and math.isfinite(wd) and wd >= 0):
            raise invalid("weight_decay", caller, "a float in [0, inf)", wd)
        if self.el2n_epoch is None:  # the default follows epochs, as the job's
            object.__setattr__(self, "el2n_epoch", min(EL2N_EPOCH_DEFAULT, self.epochs))
        elif not _is_int(self.el2n_epoch) or not 0 <= self.el2n_epoch <= self.epochs:
            raise invalid("el2n_epoch", caller, f"an integer in [0, epochs={self.epochs}]", self.el2n_epoch)
        if not _is_int(self.seed):
            raise invalid("seed", caller, "an integer", self.seed)


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

    import torch

    from .models import build_model
    from .scores import training_dynamics as score_training_run
    from .training import as_tensor

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
