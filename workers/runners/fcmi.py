"""Runner of the ``fcmi-bound`` job kind: sample-wise f-CMI bounds (docs/science.md §3).

A fan-out kind. ``plan`` makes one unit per (n, supersample seed, selector seed); each
unit trains one learner and returns its predicted classes on the 2n supersample inputs;
``reduce`` estimates the per-pair MI, the bound and the gap, and draws the figure.
See ``docs/jobs/fcmi-bound.md``.
"""

from __future__ import annotations

import io
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from infoscore import fcmi
from infoscore.errors import invalid

from .base import JobContext, JobOutput, Runner, Unit

MI_LABELS = {
    fcmi.MiEstimator.PLUGIN: "plug-in (biased upward; comparable with published numbers)",
    fcmi.MiEstimator.MILLER_MADOW: "bias-corrected (Miller-Madow; not a guaranteed bound)",
}


def _dataset_ref(ctx: JobContext) -> Any:
    ref = ctx.request.dataset
    return ref if isinstance(ref, str) else ref.model_dump(mode="json")


def _unit_name(n: int, supersample: int, selector: int) -> str:
    return f"n{n}-s{supersample}-j{selector}"


class FcmiRunner(Runner):
    """plan -> len(n) * k1 * k2 trainings; run_unit -> predictions; reduce -> bound vs gap."""

    kind = "fcmi-bound"

    def unit_scope(self, job_fingerprint: str) -> str:
        # Unit.params hold everything a unit's result depends on (plan() below): units are
        # shared by every fcmi-bound job, whatever its n list, k1, k2 or estimator. Bump the
        # version when the training unit's algorithm changes, to retire old cache entries.
        return "fcmi-bound/unit-v1"

    # ------------------------------------------------------------ plan

    def validate(self, ctx: JobContext) -> None:
        """Checks the request needs the dataset for: 2 * max(n) <= training pool size."""
        p = ctx.params
        pool = ctx.dataset.n_train
        largest = max(p.n)
        if 2 * largest > pool:
            raise invalid(
                "n",
                "fcmi-bound",
                f"a list of sizes with 2 * max(n) <= {pool} (the training samples)",
                list(p.n),
            )

    def plan(self, ctx: JobContext) -> list[Unit]:
        """One unit per (n, supersample s < k1, selector j < k2), in that nesting order.

        Unit.params holds everything that determines the unit's result (dataset, n, seeds,
        learner, and for ``learner = model`` the model spec and optimisation recipe), so
        identical trainings get the same content key across jobs. The 1-NN control
        depends on neither the model nor the seeds of the training loop.
        """
        self.validate(ctx)
        p = ctx.params
        learner = fcmi.Learner(p.learner)
        dataset = _dataset_ref(ctx)
        units = []
        for n in p.n:
            for s in range(p.k1):
                for j in range(p.k2):
                    params: dict[str, Any] = {
                        "dataset": dataset,
                        "n": int(n),
                        "supersample_seed": s,
                        "selector_seed": j,
                        "learner": learner.value,
                    }
                    if learner is fcmi.Learner.MODEL:
                        params.update(
                            model=ctx.model_spec,
                            epochs=int(p.epochs),
                            lr=float(p.lr),
                            batch_size=int(p.batch_size),
                            optimizer=str(p.optimizer),
                            init_seed=fcmi.unit_seeds(ctx.seed, s, j, deterministic=p.deterministic),
                        )
                    units.append(Unit(name=_unit_name(int(n), s, j), params=params))
        return units

    # ------------------------------------------------------------ one unit

    def run_unit(self, ctx: JobContext, unit: Unit) -> dict[str, np.ndarray]:
        """Train one learner. -> predictions (n, 2) int16, selector (n,) int8,
        accuracy (2,) float64 = [train, held-out], seconds (1,) float64."""
        start = time.perf_counter()
        up = unit.params
        ds = ctx.dataset
        pairs = fcmi.make_supersample(ds.n_train, int(up["n"]), int(up["supersample_seed"]))
        selector = fcmi.draw_selector(int(up["n"]), int(up["selector_seed"]))
        learner = fcmi.Learner(up["learner"])
        if learner is fcmi.Learner.MODEL:
            result = fcmi.train_unit(
                ds.x_train,
                ds.y_train,
                pairs,
                selector,
                n_classes=ds.n_classes,
                learner=learner,
                model_spec=up["model"],
                input_shape=ds.input_shape,
                epochs=int(up["epochs"]),
                batch_size=int(up["batch_size"]),
                lr=float(up["lr"]),
                optimizer=str(up["optimizer"]),
                seed=int(up["init_seed"]),
                device=ctx.device,
                should_stop=ctx.should_stop,
            )
        else:
            result = fcmi.train_unit(
                ds.x_train, ds.y_train, pairs, selector, n_classes=ds.n_classes, learner=learner
            )
        return {
            "predictions": result.predictions,
            "selector": selector,
            "accuracy": np.array([result.train_accuracy, result.heldout_accuracy], dtype=np.float64),
            "seconds": np.array([time.perf_counter() - start], dtype=np.float64),
        }

    # ------------------------------------------------------------ reduce

    def reduce(self, ctx: JobContext, results: dict[str, dict[str, np.ndarray]]) -> JobOutput:
        """Per supersample: per-pair MI, bound, gap; per n: mean and std over supersamples."""
        start = time.perf_counter()
        p = ctx.params
        estimator = fcmi.MiEstimator(p.mi_estimator)
        k = ctx.dataset.n_classes
        grouped: dict[tuple[int, int], list[dict[str, np.ndarray]]] = defaultdict(list)
        missing = []
        for n in p.n:
            for s in range(p.k1):
                for j in range(p.k2):
                    name = _unit_name(int(n), s, j)
                    if name not in results:
                        missing.append(name)
                    else:
                        grouped[(int(n), s)].append(results[name])
        if missing:
            raise invalid(
                "results", "FcmiRunner.reduce", "one result per planned unit", f"{len(missing)} missing"
            )

        unit_seconds = 0.0
        rows: list[str] = ["n,supersample,pair,mi"]
        summary_results: list[dict[str, Any]] = []
        experimental: list[dict[str, Any]] = []
        bias_by_n: list[dict[str, float]] = []
        for n in p.n:
            estimates = []
            for s in range(p.k1):
                draws = grouped[(int(n), s)]
                unit_seconds += float(sum(float(d["seconds"][0]) for d in draws))
                est = fcmi.estimate_supersample(
                    np.stack([d["predictions"] for d in draws]),
                    np.stack([d["selector"] for d in draws]),
                    np.array([d["accuracy"][0] for d in draws]),
                    np.array([d["accuracy"][1] for d in draws]),
                    n_classes=k,
                    estimator=estimator,
                )
                estimates.append(est)
                rows.extend(f"{n},{s},{i},{v:.10g}" for i, v in enumerate(est.mi))
                if p.experimental:
                    experimental.append({"n": int(n), "supersample": s, **fcmi.experimental_binary_kl(est)})
            agg = fcmi.aggregate(int(n), estimates)
            summary_results.append(
                {
                    "n": agg.n,
                    "gap_mean": agg.gap_mean,
                    "gap_std": agg.gap_std,
                    "bound_mean": agg.bound_mean,
                    "bound_std": agg.bound_std,
                    "train_acc": agg.train_accuracy,
                    "test_acc": agg.heldout_accuracy,
                    "units": agg.units,
                }
            )
            bias_by_n.append({"n": agg.n, "bias_estimate": agg.bias_estimate})

        summary: dict[str, Any] = {
            "kind": self.kind,
            "results": summary_results,
            "settings": self._settings(ctx),
            "mi_estimator": estimator.value,
            "mi_estimator_label": MI_LABELS[estimator],
            "units_of_information": "nats",
            # Mean over pairs of the first-order plug-in bias (|S_obs|-1)(|U_obs|-1)/(2 k2), nats per pair.
            "bias_estimate": float(np.mean([b["bias_estimate"] for b in bias_by_n])),
            "bias_estimate_by_n": bias_by_n,
            "seconds": unit_seconds + (time.perf_counter() - start),
        }
        if p.experimental:
            summary["experimental"] = {
                "label": "unverified: binary-KL form, mean per-pair MI standing in for f-CMI/n",
                "supersamples": experimental,
            }
        files: dict[str, bytes | Path] = {
            "mi.csv": ("\n".join(rows) + "\n").encode(),
            "bound.png": _plot(summary_results, estimator),
        }
        return JobOutput(summary=summary, scores=None, files=files)

    def run(self, ctx: JobContext) -> JobOutput:
        """Serial convenience: plan, every unit in turn (with progress), reduce."""
        units = self.plan(ctx)
        results = {}
        for i, unit in enumerate(units):
            results[unit.name] = self.run_unit(ctx, unit)
            ctx.progress(i + 1, len(units))
        return self.reduce(ctx, results)

    def _settings(self, ctx: JobContext) -> dict[str, Any]:
        p = ctx.params
        learner = fcmi.Learner(p.learner)
        settings: dict[str, Any] = {
            "n": list(p.n),
            "k1": p.k1,
            "k2": p.k2,
            "learner": learner.value,
            "n_classes": ctx.dataset.n_classes,
            "pool_size": ctx.dataset.n_train,
            "supersample_seeds": list(range(p.k1)),
            "selector_seeds": list(range(p.k2)),
            "gap": "train accuracy - held-out accuracy on the supersample (0-1 loss)",
            "bound": "(1/n) sum_i sqrt(2 I_i), sample-wise",
        }
        if learner is fcmi.Learner.MODEL:
            settings.update(
                model=ctx.model_spec,
                epochs=p.epochs,
                lr=p.lr,
                batch_size=p.batch_size,
                optimizer=p.optimizer,
                deterministic=p.deterministic,
                seed=ctx.seed,
                init_seed=(
                    fcmi.DETERMINISTIC_SEED
                    if p.deterministic
                    else "SeedSequence([seed, supersample_seed, selector_seed]).generate_state(1)[0]"
                ),
            )
        return settings


def _plot(results: list[dict[str, Any]], estimator: fcmi.MiEstimator) -> bytes:
    """Bound and gap (mean ± std over supersamples) vs n, log-x. -> PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    ns = np.array([r["n"] for r in results], dtype=np.float64)
    order = np.argsort(ns)
    ns = ns[order]

    def col(key: str) -> np.ndarray:
        return np.array([results[i][key] for i in order], dtype=np.float64)

    fig = Figure(figsize=(5.0, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    label = "f-CMI bound" if estimator is fcmi.MiEstimator.PLUGIN else "f-CMI bound (bias-corrected)"
    ax.errorbar(ns, col("bound_mean"), yerr=col("bound_std"), marker="o", capsize=3, label=label)
    ax.errorbar(ns, col("gap_mean"), yerr=col("gap_std"), marker="s", capsize=3, label="generalization gap")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(v)) for v in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("n (training samples)")
    ax.set_ylabel("error (0-1 loss)")
    ax.set_ylim(bottom=0.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
