"""Runner of the ``sample-information`` job: SI and F-SI of every training sample.

Thin: builds the seeded model, moves it to its linearization point w₀ (``linearize_at``:
init, after the training recipe, or a checkpoint artifact of an earlier job), picks the
held-out inputs, calls :func:`infoscore.sample_info.sample_information` and, when asked,
checks it against real retraining from the same w₀ (:mod:`infoscore.ground_truth`).
Defaults and conventions are documented in docs/jobs/sample-information.md.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from infoscore import ground_truth as gt
from infoscore.errors import invalid
from infoscore.models import build_model
from infoscore.sample_info import load_checkpoint, sample_information, train_linearization_point
from infoscore.training import as_tensor
from store.artifacts import ArtifactStore

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
        y = torch.as_tensor(ds.y_train, dtype=torch.long, device=ctx.device)
        x_eval = y_eval = None
        if ds.n_test > 0:
            m = min(int(params.eval_size), ds.n_test)
            rows = np.sort(np.random.default_rng(ctx.seed).choice(ds.n_test, size=m, replace=False))
            x_eval = as_tensor(ds.x_test[rows], ctx.device)
            y_eval = torch.as_tensor(ds.y_test[rows], dtype=torch.long, device=ctx.device)
        elif "predictions" in measures or params.delta_f:
            raise invalid(
                "measures",
                "sample-information",
                "without 'predictions' or delta_f when the dataset has no test split",
                measures,
            )
        gt_units = 0 if params.ground_truth is None else min(params.ground_truth.subset, n) + 1
        pre_units = params.train_epochs if params.linearize_at == "trained" else 0
        si_total: list[int] = [1]

        def si_progress(done: int, total: int) -> None:
            si_total[0] = total
            ctx.progress(pre_units + done, pre_units + total + gt_units)

        point: dict[str, Any] = {"linearize_at": params.linearize_at}
        tic = time.perf_counter()
        if params.linearize_at == "trained":
            trained = train_linearization_point(
                model, x, y, epochs=params.train_epochs, lr=params.train_lr,
                batch_size=params.train_batch_size, optimizer=params.train_optimizer, seed=ctx.seed,
                progress=lambda done, _total: ctx.progress(done, pre_units + n + gt_units),
                should_stop=ctx.should_stop,
            )  # fmt: skip
            point.update(trained)
        elif params.linearize_at != "init":
            ref = params.linearize_at
            if ctx.data_dir is None:
                raise invalid("linearize_at", "sample-information", "a worker with an artifact store", None)
            path = ArtifactStore(ctx.data_dir).artifact_path(ref.job, ref.artifact)
            if not path.is_file():
                raise invalid(
                    "linearize_at", "sample-information", "an existing artifact of a finished job",
                    f"{ref.job}/{ref.artifact}",
                )  # fmt: skip
            point.update(load_checkpoint(model, path))
            point["linearize_at"] = {"job": ref.job, "artifact": ref.artifact}
        linearize_s = time.perf_counter() - tic

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
            weights_full_jitter=params.weights_full_jitter,
            delta_f=params.delta_f,
            progress=si_progress,
            should_stop=ctx.should_stop,
        )
        info = res.info
        columns = {
            name: values
            for name, values in res.columns().items()
            if name != "si_weights" or "weights" in params.measures
        }
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
            **point,
        }
        if linearize_s > 0.01:
            summary["timings"]["linearization_point_s"] = linearize_s
        for key in ("finite_t_route", "weights_full_jitter", "weights_full_space"):
            if key in info:
                summary[key] = info[key]
        files: dict[str, bytes | Path] = {}
        if res.delta_f is not None:
            delta_path = ctx.workdir / "delta_f.npz"
            np.savez(delta_path, delta_f=res.delta_f)
            files["delta_f.npz"] = delta_path
            summary["delta_f"] = {
                "artifact": "delta_f.npz",
                "array": "delta_f",
                "shape": list(res.delta_f.shape),
                "dtype": "float32",
                "meaning": "f_w(x') - f_{w_-i}(x'): axis 0 training sample i (upload order), axis 1 the m "
                "held-out inputs (eval_indices), axis 2 the k outputs",
                "eval_indices": [int(r) for r in rows] if ds.n_test > 0 else [],
            }
        for name in columns:
            if not name.startswith("rank_"):
                summary[f"top{TOP}_{name}"] = [
                    int(i) for i in np.argsort(-columns[name], kind="stable")[:TOP]
                ]
        if params.ground_truth is not None:
            tic = time.perf_counter()
            offset = pre_units + si_total[0]
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
        final = pre_units + si_total[0] + gt_units
        ctx.progress(final, final)
        summary["seconds"] = time.perf_counter() - started
        return JobOutput(summary=_jsonable(summary), scores=pd.DataFrame(columns), files=files)
