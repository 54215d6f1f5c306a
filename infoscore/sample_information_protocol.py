"""The ``sample-information`` job as one library call: :func:`sample_information` on a dataset.

The whole protocol of the job (docs/jobs/sample-information.md): build the seeded model,
move it to its linearization point w₀ (``linearize_at``: the initialisation, after the
training recipe, or a safetensors checkpoint), draw the m held-out inputs, compute SI and
F-SI of every training sample (:func:`infoscore.sample_info.sample_information`, the
tensor-level core), check them against real retraining on a seeded subset when asked
(:mod:`infoscore.ground_truth`), and assemble the job's table and summary. The service's
job runs exactly this call, so a notebook gets the job's numbers for the same seed::

    import infoscore
    from infoscore.data import load_digits
    ds = load_digits(label_noise=0.2)
    config = infoscore.SampleInformationConfig(method="projected", projection_dim=512, seed=0)
    res = infoscore.sample_information(ds, {"arch": "mlp", "hidden": [64]}, config)
    res.table().sort_values("rank_si_predictions").head(), res.summary()["lam"]

The settings are in :mod:`infoscore.sample_information_config`.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import ground_truth as gt
from .config_checks import model_spec
from .data import Dataset
from .errors import invalid
from .models import build_model
from .progress import ProgressFn, StopFn, no_progress
from .sample_info import SampleInformation, load_checkpoint, train_linearization_point
from .sample_info import sample_information as estimate_sample_information
from .sample_information_config import LinearizationCheckpoint, SampleInformationConfig
from .training import as_tensor

if TYPE_CHECKING:
    import pandas as pd

TOP = 10  # the summary's top<TOP>_<score> lists
DELTA_F_ARTIFACT = "delta_f.npz"


def informative_rank(scores: np.ndarray) -> np.ndarray:
    """(n,) scores -> (n,) int64 ranks, 1 = most informative (largest score); ties keep sample order."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(scores.size, dtype=np.int64)
    ranks[order] = np.arange(1, scores.size + 1)
    return ranks


@dataclass
class SampleInformationResult:
    """What :func:`sample_information` found.

    estimate: the tensor-level result (scores (n,) in nats, delta_f, the linearized
    model's accuracies, ``info``: p, d, λ, jitter, timings, ...). linearization_point: where
    w₀ was (``linearize_at`` as the summary records it; with ``"trained"`` also
    ``train_epochs``, ``trained_loss``, ``trained_accuracy``; with a checkpoint
    ``checkpoint_tensors``). eval_indices: the test-split rows of the m held-out inputs
    (None without a test split). ground_truth: the correlation report of
    :func:`infoscore.ground_truth.compare` plus ``reference`` and ``indices``, when asked.
    linearization_seconds / ground_truth_seconds / seconds: wall times of moving to w₀, of
    the ground truth, and of the whole call.
    """

    estimate: SampleInformation
    config: SampleInformationConfig
    n: int
    k: int
    linearization_point: dict[str, Any]
    eval_indices: np.ndarray | None
    ground_truth: dict[str, Any] | None = None
    linearization_seconds: float = 0.0
    ground_truth_seconds: float | None = None
    seconds: float = math.nan

    def columns(self) -> dict[str, np.ndarray]:
        """Per-sample columns: the requested scores (``si_weights`` only when ``weights`` was
        asked for, not when ground truth alone needed it), then ``rank_si_weights`` and
        ``rank_si_predictions`` (1 = most informative)."""
        columns = {
            name: values
            for name, values in self.estimate.columns().items()
            if name != "si_weights" or "weights" in self.config.measures
        }
        for name in ("si_weights", "si_predictions"):
            if name in columns:
                columns[f"rank_{name}"] = informative_rank(columns[name])
        return columns

    def table(self) -> pd.DataFrame:
        """The job's per-sample table, one row per training sample in dataset order."""
        import pandas as pd

        return pd.DataFrame(self.columns())

    def figures(self) -> dict[str, bytes]:
        """PNG files of the job: none (the job page draws its charts from the table)."""
        return {}

    def write_files(self, directory: str | Path) -> dict[str, Path]:
        """Write the job's array artifacts into ``directory``: ``delta_f.npz`` (one float32
        array ``delta_f``, (n, m, k)) when it was asked for. Returns name -> path."""
        if self.estimate.delta_f is None:
            return {}
        path = Path(directory) / DELTA_F_ARTIFACT
        np.savez(path, delta_f=self.estimate.delta_f)
        return {DELTA_F_ARTIFACT: path}

    def summary(self) -> dict[str, Any]:
        """The job's summary (keys in docs/jobs/sample-information.md, "Outputs"). JSON-able
        except NaN/inf (e.g. ``test_accuracy`` without held-out labels, ``cond_A``)."""
        cfg, est, info = self.config, self.estimate, self.estimate.info
        summary: dict[str, Any] = {
            "train_accuracy": est.train_accuracy,
            "test_accuracy": est.test_accuracy,
            "n": self.n,
            "k": self.k,
            "p": info["p"],
            "t": cfg.t,
            "l2": info["l2"],
            "method": cfg.method,
            "seconds": self.seconds,
            "d": info["d"],
            "m": info["m"],
            "lam": info["lam"],
            "lam_loo": info["lam_loo"],
            "l2_auto": info["l2_auto"],
            "l2_auto_scale": info["l2_auto_scale"] if info["l2_auto"] else None,
            "lr": cfg.lr,
            "eta": info["eta"],
            "time": cfg.time,
            "loo_lambda": cfg.loo_lambda,
            "sigma": cfg.sigma,
            "jitter": info["jitter"],
            "jitter_eps": info["jitter_eps"],
            "cond_A": info["cond_A"],
            "units": "nats",
            "timings": dict(info["timings"]),
            **self.linearization_point,
        }
        if self.linearization_seconds > 0.01:
            summary["timings"]["linearization_point_s"] = self.linearization_seconds
        for key in ("finite_t_route", "weights_full_jitter", "weights_full_space"):
            if key in info:
                summary[key] = info[key]
        if est.delta_f is not None:
            summary["delta_f"] = {
                "artifact": DELTA_F_ARTIFACT,
                "array": "delta_f",
                "shape": list(est.delta_f.shape),
                "dtype": "float32",
                "meaning": "f_w(x') - f_{w_-i}(x'): axis 0 training sample i (upload order), axis 1 the m "
                "held-out inputs (eval_indices), axis 2 the k outputs",
                "eval_indices": [] if self.eval_indices is None else [int(r) for r in self.eval_indices],
            }
        columns = self.columns()
        for name in columns:
            if not name.startswith("rank_"):
                summary[f"top{TOP}_{name}"] = [
                    int(i) for i in np.argsort(-columns[name], kind="stable")[:TOP]
                ]
        if self.ground_truth is not None:
            summary["ground_truth"] = dict(self.ground_truth)
            summary["timings"]["ground_truth_s"] = self.ground_truth_seconds
        return summary


def sample_information(
    dataset: Dataset,
    model: Mapping[str, Any] | None = None,
    config: SampleInformationConfig = SampleInformationConfig(),
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> SampleInformationResult:
    """SI and F-SI of every training sample of ``dataset`` for the seeded ``model`` (a
    :func:`infoscore.models.build_model` spec; None = the default MLP) linearized at
    ``config.linearize_at``.

    The m = min(``eval_size``, n_test) held-out inputs are a seeded subset of the test
    split; a dataset without one cannot give ``predictions`` or ``delta_f`` (refused before
    any work). ``progress(done, total)`` counts the training epochs (``"trained"``), the
    stages of the estimate and the ground-truth retrainings; ``should_stop()`` is checked
    throughout and raises ``Cancelled``.
    """
    caller = "sample_information"
    if not isinstance(config, SampleInformationConfig):
        raise invalid("config", caller, "a SampleInformationConfig", type(config).__name__)
    spec = model_spec(model, caller)
    started = _time.perf_counter()
    ds = dataset
    n, k = ds.n_train, ds.n_classes
    measures = list(dict.fromkeys(config.measures))
    if config.ground_truth is not None and "weights" not in measures:
        measures.insert(0, "weights")  # the ground truth correlates si_weights
    eval_rows: np.ndarray | None = None
    if ds.n_test > 0:
        m = min(int(config.eval_size), ds.n_test)
        eval_rows = np.sort(np.random.default_rng(config.seed).choice(ds.n_test, size=m, replace=False))
    elif "predictions" in measures or config.delta_f:
        raise invalid(
            "measures", "sample-information",
            "without 'predictions' or delta_f when the dataset has no test split", measures,
        )  # fmt: skip

    report = progress if progress is not None else no_progress
    dev = torch.device(device)
    net = build_model(spec, ds.input_shape, k, seed=config.seed).to(dev)
    x = as_tensor(ds.x_train, dev)
    y = torch.as_tensor(ds.y_train, dtype=torch.long, device=dev)
    x_eval = y_eval = None
    if eval_rows is not None:
        x_eval = as_tensor(ds.x_test[eval_rows], dev)
        y_eval = torch.as_tensor(ds.y_test[eval_rows], dtype=torch.long, device=dev)

    # Progress units: training epochs, then the estimate's stages, then subset + 1 retrainings.
    gt_units = 0 if config.ground_truth is None else min(config.ground_truth.subset, n) + 1
    pre_units = config.train_epochs if config.linearize_at == "trained" else 0
    si_total = [1]

    def si_progress(done: int, total: int) -> None:
        si_total[0] = total
        report(pre_units + done, pre_units + total + gt_units)

    point: dict[str, Any] = {"linearize_at": config.linearize_at}
    tic = _time.perf_counter()
    if config.linearize_at == "trained":
        point.update(
            train_linearization_point(
                net, x, y, epochs=config.train_epochs, lr=config.train_lr,
                batch_size=config.train_batch_size, optimizer=config.train_optimizer, seed=config.seed,
                progress=lambda done, _total: report(done, pre_units + n + gt_units),
                should_stop=should_stop,
            )
        )  # fmt: skip
    elif isinstance(config.linearize_at, LinearizationCheckpoint):
        point.update(load_checkpoint(net, config.linearize_at.path))
        point["linearize_at"] = config.linearize_at.describe()
    linearization_seconds = _time.perf_counter() - tic

    est = estimate_sample_information(
        net,
        x,
        y,
        k=k,
        x_eval=x_eval,
        y_eval=y_eval,
        t=config.t,
        lr=config.lr,
        l2=config.l2,
        l2_auto_scale=config.l2_auto_scale,
        sigma=config.sigma,
        measures=measures,
        method=config.method,
        projection_dim=config.projection_dim,
        projection=config.projection,
        time=config.time,
        loo_lambda=config.loo_lambda,
        seed=config.seed,
        weights_full_jitter=config.weights_full_jitter,
        delta_f=config.delta_f,
        progress=si_progress,
        should_stop=should_stop,
        kernel_method=config.kernel_method,
        projection_structure=config.projection_structure,
    )
    result = SampleInformationResult(
        estimate=est,
        config=config,
        n=n,
        k=k,
        linearization_point=point,
        eval_indices=eval_rows,
        linearization_seconds=linearization_seconds,
    )
    if config.ground_truth is not None:
        tic = _time.perf_counter()
        offset = pre_units + si_total[0]
        indices = gt.choose_subset(n, config.ground_truth.subset, config.seed)
        kwargs: dict[str, Any] = {
            "k": k,
            "indices": indices,
            "t": config.t,
            "lr": config.lr,
            "l2": est.info["l2"],
            "loo_lambda": config.loo_lambda,
            "x_eval": x_eval if "predictions" in measures else None,
            "progress": lambda done, total: report(offset + done, offset + total + 1),
            "should_stop": should_stop,
        }
        if config.ground_truth.reference == "network":
            actual = gt.network_loo(net, x, y, **kwargs)
        else:
            actual = gt.linearized_loo(net, x, y, **kwargs)
        assert est.si_weights is not None
        ground_truth: dict[str, Any] = dict(gt.compare(est.si_weights, actual, est.si_predictions))
        ground_truth["reference"] = config.ground_truth.reference
        ground_truth["indices"] = [int(i) for i in indices]
        result.ground_truth = ground_truth
        result.ground_truth_seconds = _time.perf_counter() - tic
    final = pre_units + si_total[0] + gt_units
    report(final, final)
    result.seconds = _time.perf_counter() - started
    return result
