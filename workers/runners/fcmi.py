"""Runner of the ``fcmi-bound`` job kind: sample-wise f-CMI bounds (docs/science.md §3).

A fan-out kind. ``plan`` makes one unit per (n, supersample seed); each unit trains the
k2 selector draws of its supersample as one batched ensemble and returns their predicted
classes on the 2n supersample inputs (after each recorded epoch);
``reduce`` estimates the per-pair MI, the bound and the gap, and draws the figure.
See ``docs/jobs/fcmi-bound.md``.
"""

from __future__ import annotations

import io
import time
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


def _unit_name(n: int, supersample: int) -> str:
    return f"n{n}-s{supersample}"


class FcmiRunner(Runner):
    """plan -> len(n) * k1 units of k2 trainings; run_unit -> predictions; reduce -> bound vs gap."""

    kind = "fcmi-bound"

    def unit_scope(self, job_fingerprint: str) -> str:
        # Unit.params hold everything a unit's result depends on (plan() below): units are
        # shared by every fcmi-bound job with the same (n, supersample, k2, recipe,
        # eval_epochs), whatever its other n values, k1 or estimator. Bump the version when
        # the unit's algorithm or layout changes, to retire old cache entries
        # (v2: one unit = the k2 selector draws of one supersample, trained batched).
        return "fcmi-bound/unit-v2"

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
        """One unit per (n, supersample s < k1), in that nesting order; each trains the k2
        selector draws j < k2 of its supersample together (one batched ensemble).

        Unit.params holds everything that determines the unit's result (dataset, n, seeds,
        learner, and for ``learner = model`` the model spec, optimisation recipe, per-draw
        init seeds and recorded epochs), so identical units get the same content key across
        jobs and a unit runs from its params alone. The 1-NN control depends on neither the
        model nor the seeds of the training loop.
        """
        self.validate(ctx)
        p = ctx.params
        learner = fcmi.Learner(p.learner)
        dataset = _dataset_ref(ctx)
        units = []
        for n in p.n:
            for s in range(p.k1):
                params: dict[str, Any] = {
                    "dataset": dataset,
                    "n": int(n),
                    "supersample_seed": s,
                    "selector_seeds": list(range(p.k2)),
                    "learner": learner.value,
                }
                if learner is fcmi.Learner.MODEL:
                    params.update(
                        model=ctx.model_spec,
                        epochs=int(p.epochs),
                        lr=float(p.lr),
                        batch_size=int(p.batch_size),
                        optimizer=str(p.optimizer),
                        init_seeds=[
                            fcmi.unit_seeds(ctx.seed, s, j, deterministic=p.deterministic)
                            for j in range(p.k2)
                        ],
                        eval_epochs=[int(e) for e in fcmi.recorded_epochs(int(p.epochs), p.eval_epochs)],
                    )
                units.append(Unit(name=_unit_name(int(n), s), params=params))
        return units

    # ------------------------------------------------------------ one unit

    def run_unit(self, ctx: JobContext, unit: Unit) -> dict[str, np.ndarray]:
        """Train the unit's k2 learners (batched). -> predictions (E, k2, n, 2) int16 after
        each recorded epoch, epochs (E,) int64, selectors (k2, n) int8, accuracy (E, k2, 2)
        float64 = [train, held-out], seconds (1,) float64. Reads ``unit.params`` only."""
        start = time.perf_counter()
        up = unit.params
        ds = ctx.dataset
        n = int(up["n"])
        pairs = fcmi.make_supersample(ds.n_train, n, int(up["supersample_seed"]))
        selectors = np.stack([fcmi.draw_selector(n, int(j)) for j in up["selector_seeds"]])
        learner = fcmi.Learner(up["learner"])
        if learner is fcmi.Learner.MODEL:
            batch = fcmi.train_units(
                ds.x_train,
                ds.y_train,
                pairs,
                selectors,
                n_classes=ds.n_classes,
                seeds=[int(v) for v in up["init_seeds"]],
                learner=learner,
                model_spec=up["model"],
                input_shape=ds.input_shape,
                epochs=int(up["epochs"]),
                batch_size=int(up["batch_size"]),
                lr=float(up["lr"]),
                optimizer=str(up["optimizer"]),
                eval_epochs=[int(e) for e in up["eval_epochs"]],
                device=ctx.device,
                should_stop=ctx.should_stop,
            )
        else:
            batch = fcmi.train_units(
                ds.x_train,
                ds.y_train,
                pairs,
                selectors,
                n_classes=ds.n_classes,
                seeds=list(range(len(selectors))),
                learner=learner,
            )
        return {
            "predictions": batch.predictions,
            "epochs": batch.epochs,
            "selectors": selectors,
            "accuracy": np.stack([batch.train_accuracy, batch.heldout_accuracy], axis=-1).astype(np.float64),
            "seconds": np.array([time.perf_counter() - start], dtype=np.float64),
        }

    # ------------------------------------------------------------ reduce

    def reduce(self, ctx: JobContext, results: dict[str, dict[str, np.ndarray]]) -> JobOutput:
        """Per supersample: per-pair MI, bound, gap; per n: mean and std over supersamples;
        the same after every recorded epoch (``eval_epochs``)."""
        start = time.perf_counter()
        p = ctx.params
        estimator = fcmi.MiEstimator(p.mi_estimator)
        k = ctx.dataset.n_classes
        missing = [
            _unit_name(int(n), s) for n in p.n for s in range(p.k1) if _unit_name(int(n), s) not in results
        ]
        if missing:
            raise invalid(
                "results", "FcmiRunner.reduce", "one result per planned unit", f"{len(missing)} missing"
            )
        final_epoch = int(p.epochs)
        unit_seconds = 0.0
        rows: list[str] = ["n,supersample,pair,mi"]
        epoch_rows: list[str] = ["epoch,n,supersample,pair,mi"]
        summary_results: list[dict[str, Any]] = []
        by_epoch: list[dict[str, Any]] = []
        experimental: list[dict[str, Any]] = []
        bias_by_n: list[dict[str, float]] = []
        for n in p.n:
            draws = [results[_unit_name(int(n), s)] for s in range(p.k1)]
            unit_seconds += float(sum(float(d["seconds"][0]) for d in draws))
            epochs = [int(e) for e in draws[0]["epochs"]]
            per_epoch: dict[int, list[fcmi.SupersampleEstimate]] = {}
            for e_i, epoch in enumerate(epochs):
                per_epoch[epoch] = [
                    fcmi.estimate_supersample(
                        d["predictions"][e_i],
                        d["selectors"],
                        d["accuracy"][e_i, :, 0],
                        d["accuracy"][e_i, :, 1],
                        n_classes=k,
                        estimator=estimator,
                    )
                    for d in draws
                ]
            estimates = per_epoch[epochs[-1]]
            for s, est in enumerate(estimates):
                rows.extend(f"{n},{s},{i},{v:.10g}" for i, v in enumerate(est.mi))
                if p.experimental:
                    experimental.append({"n": int(n), "supersample": s, **fcmi.experimental_binary_kl(est)})
            agg = fcmi.aggregate(int(n), estimates)
            summary_results.append(_result_row(agg))
            bias_by_n.append({"n": agg.n, "bias_estimate": agg.bias_estimate})
            if p.eval_epochs:
                for epoch in epochs:
                    ests = per_epoch[epoch]
                    for s, est in enumerate(ests):
                        epoch_rows.extend(f"{epoch},{n},{s},{i},{v:.10g}" for i, v in enumerate(est.mi))
                    row = _result_row(fcmi.aggregate(int(n), ests))
                    row["mi_mean"] = float(np.mean([est.mi.mean() for est in ests]))
                    by_epoch.append({"epoch": epoch, **row})
            if epochs[-1] != final_epoch and fcmi.Learner(p.learner) is fcmi.Learner.MODEL:
                raise invalid(
                    "results", "FcmiRunner.reduce", f"units trained for {final_epoch} epochs", epochs[-1]
                )

        summary: dict[str, Any] = {
            "kind": self.kind,
            "results": summary_results,
            "settings": self._settings(ctx),
            "mi_estimator": estimator.value,
            "mi_estimator_label": MI_LABELS[estimator],
            "units_of_information": "nats",
            # Mean over pairs of the plug-in bias Miller-Madow estimates, (m_SU - m_S - m_U + 1)/(2 k2), nats per pair.
            "bias_estimate": float(np.mean([b["bias_estimate"] for b in bias_by_n])),
            "bias_estimate_by_n": bias_by_n,
            "seconds": unit_seconds + (time.perf_counter() - start),
        }
        files: dict[str, bytes | Path] = {
            "mi.csv": ("\n".join(rows) + "\n").encode(),
            "bound.png": _plot(summary_results, estimator),
        }
        if p.eval_epochs:
            summary["by_epoch"] = by_epoch
            files["mi_by_epoch.csv"] = ("\n".join(epoch_rows) + "\n").encode()
            files["bound_epochs.png"] = _plot_epochs(by_epoch, estimator)
        if p.experimental:
            summary["experimental"] = {
                "label": "unverified: binary-KL form, mean per-pair MI standing in for f-CMI/n",
                "supersamples": experimental,
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
                eval_epochs=list(p.eval_epochs),
                seed=ctx.seed,
                init_seed=(
                    fcmi.DETERMINISTIC_SEED
                    if p.deterministic
                    else "SeedSequence([seed, supersample_seed, selector_seed]).generate_state(1)[0]"
                ),
            )
        return settings


def _result_row(agg: fcmi.Aggregate) -> dict[str, Any]:
    return {
        "n": agg.n,
        "gap_mean": agg.gap_mean,
        "gap_std": agg.gap_std,
        "bound_mean": agg.bound_mean,
        "bound_std": agg.bound_std,
        "train_acc": agg.train_accuracy,
        "test_acc": agg.heldout_accuracy,
        "units": agg.units,
    }


def _plot_epochs(rows: list[dict[str, Any]], estimator: fcmi.MiEstimator) -> bytes:
    """Bound (solid) and gap (dashed) vs epoch, one colour per n, mean ± std over
    supersamples. -> PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    label = "bound" if estimator is fcmi.MiEstimator.PLUGIN else "bound (bias-corrected)"
    for i, n in enumerate(sorted({int(r["n"]) for r in rows})):
        mine = sorted((r for r in rows if int(r["n"]) == n), key=lambda r: int(r["epoch"]))
        ep = np.array([r["epoch"] for r in mine], dtype=np.float64)
        color = f"C{i % 10}"
        for key, style, what in (("bound", "-o", label), ("gap", "--s", "gap")):
            mean = np.array([r[f"{key}_mean"] for r in mine])
            std = np.array([r[f"{key}_std"] for r in mine])
            ax.plot(ep, mean, style, color=color, markersize=3, label=f"{what}, n = {n}")
            ax.fill_between(ep, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (0-1 loss)")
    ax.set_ylim(bottom=0.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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
