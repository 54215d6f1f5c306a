"""Runner of the ``sample-information`` job: SI and F-SI of every training sample.

Thin: builds the seeded model (at init, w₀), picks the held-out inputs, calls
:func:`infoscore.sample_info.sample_information` and, when asked, checks it against real
retraining (:mod:`infoscore.ground_truth`). Defaults and conventions are documented in
docs/jobs/sample-information.md.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from infoscore import ground_truth as gt
from infoscore.errors import invalid
from infoscore.models import build_model
from infoscore.sample_info import sample_information
from infoscore.training import as_tensor

from .base import JobContext, JobOutput, Runner

TOP = 10


def informative_rank(scores: np.ndarray) -> np.ndarray:
    """1 = most informative (largest score); ties keep sample order."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(scores.size, dtype=np.int64)
    ranks[order] = np.arange(1, scores.size + 1)
    return ranks


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class SampleInformationRunner(Runner):
    kind = "sample-information"

    def run(self, ctx: JobContext) -> JobOutput:
        started = time.perf_counter()
        params = ctx.params
        ds = ctx.dataset
        n, k = ds.n_train, ds.n_classes
        measures = list(dict.fromkeys(params.measures))
        if params.ground_truth is not None and "weights" not in measures:
            measures.insert(0, "weights")
        model = build_model(ctx.model_spec, ds.input_shape, k, seed=ctx.seed).to(ctx.device)
        x = as_tensor(ds.x_train, ctx.device)
        y = torch.as_tensor(ds.y_train, dtype=torch.long)
        x_eval = y_eval = None
        if ds.n_test > 0:
            m = min(int(params.eval_size), ds.n_test)
            rows = np.sort(np.random.default_rng(ctx.seed).choice(ds.n_test, size=m, replace=False))
            x_eval = as_tensor(ds.x_test[rows], ctx.device)
            y_eval = torch.as_tensor(ds.y_test[rows], dtype=torch.long)
        elif "predictions" in measures:
            raise invalid(
                "measures",
                "sample-information",
                "without 'predictions' when the dataset has no test split",
                measures,
            )
        gt_units = 0 if params.ground_truth is None else min(params.ground_truth.subset, n) + 1
        si_total: list[int] = [1]

        def si_progress(done: int, total: int) -> None:
            si_total[0] = total
            ctx.progress(done, total + gt_units)

        res = sample_information(
            model,
            x,
            y,
            k=k,
            x_eval=x_eval,
            y_eval=y_eval,
            t=params.t,
            lr=params.lr,
            l2=params.l2,
            l2_auto_scale=params.l2_auto_scale,
            sigma=params.sigma,
            measures=measures,
            method=params.method,
            projection_dim=params.projection_dim,
            projection=params.projection,
            time=params.time,
            loo_lambda=params.loo_lambda,
            seed=ctx.seed,
            progress=si_progress,
            should_stop=ctx.should_stop,
        )
        info = res.info
        columns: dict[str, np.ndarray] = {}
        for name in ("si_weights", "si_predictions", "si_weights_full"):
            values = getattr(res, name)
            if values is not None and (name != "si_weights" or "weights" in params.measures):
                columns[name] = values
        for name in ("si_weights", "si_predictions"):
            if name in columns:
                columns[f"rank_{name}"] = informative_rank(columns[name])
        summary: dict[str, Any] = {
            "train_accuracy": res.train_accuracy,
            "test_accuracy": res.test_accuracy,
            "n": n,
            "k": k,
            "p": info["p"],
            "t": params.t,
            "l2": info["l2"],
            "method": params.method,
            "seconds": 0.0,
            "d": info["d"],
            "m": info["m"],
            "lam": info["lam"],
            "lam_loo": info["lam_loo"],
            "l2_auto": info["l2_auto"],
            "l2_auto_scale": info["l2_auto_scale"] if info["l2_auto"] else None,
            "lr": params.lr,
            "eta": info["eta"],
            "time": params.time,
            "loo_lambda": params.loo_lambda,
            "sigma": params.sigma,
            "jitter": info["jitter"],
            "jitter_eps": info["jitter_eps"],
            "cond_A": info["cond_A"],
            "units": "nats",
            "timings": dict(info["timings"]),
        }
        for name in ("si_weights", "si_predictions", "si_weights_full"):
            if name in columns:
                summary[f"top{TOP}_{name}"] = [
                    int(i) for i in np.argsort(-columns[name], kind="stable")[:TOP]
                ]
        if params.ground_truth is not None:
            tic = time.perf_counter()
            offset = si_total[0]
            indices = gt.choose_subset(n, params.ground_truth.subset, ctx.seed)
            kwargs: dict[str, Any] = {
                "k": k,
                "indices": indices,
                "t": params.t,
                "lr": params.lr,
                "l2": info["l2"],
                "loo_lambda": params.loo_lambda,
                "x_eval": x_eval if "predictions" in measures else None,
                "progress": lambda done, total: ctx.progress(offset + done, offset + total + 1),
                "should_stop": ctx.should_stop,
            }
            if params.ground_truth.reference == "network":
                actual = gt.network_loo(model, x, y, **kwargs)
            else:
                actual = gt.linearized_loo(model, x, y, **kwargs)
            assert res.si_weights is not None
            report = gt.compare(res.si_weights, actual, res.si_predictions)
            report["reference"] = params.ground_truth.reference  # type: ignore[assignment]
            report["indices"] = [int(i) for i in indices]  # type: ignore[assignment]
            summary["ground_truth"] = report
            summary["timings"]["ground_truth_s"] = time.perf_counter() - tic
        final = si_total[0] + gt_units
        ctx.progress(final, final)
        summary["seconds"] = time.perf_counter() - started
        return JobOutput(summary=_jsonable(summary), scores=pd.DataFrame(columns))
