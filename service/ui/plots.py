"""Per job kind, the charts a researcher expects first, from the summary and the table.

Each function takes the job's stored summary (the dict of ``summary.json``) and its
per-sample table (a DataFrame, or None) and returns charts; a kind this module does not
know gets a histogram of its first score column, so a new kind still has a picture.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .charts import Chart, Series, bar_chart, finite, histogram, line_chart

Summary = dict[str, Any]


def _flipped(table: Any) -> list[bool] | None:
    """Which labels were flipped, when the dataset knows (built-ins with label noise)."""
    if table is None or "label_noisy" not in table.columns:
        return None
    mask = [bool(v) for v in table["label_noisy"].tolist()]
    return mask if any(mask) else None


def _hist(table: Any, column: str, name: str, title: str, xlabel: str | None = None) -> Chart | None:
    if table is None or column not in table.columns:
        return None
    return histogram(
        name, title, table[column].astype(float).tolist(), xlabel=xlabel or column, highlight=_flipped(table)
    )


def _training_dynamics(summary: Summary, table: Any) -> list[Chart | None]:
    epochs = summary.get("epochs")
    return [
        _hist(table, "el2n", "el2n-histogram.svg", "EL2N score, flipped labels in red"),
        _hist(
            table, "forgetting_events", "forgetting-histogram.svg", f"Forgetting events over {epochs} epochs"
        ),
    ]


def _sample_information(summary: Summary, table: Any) -> list[Chart | None]:
    return [
        _hist(
            table,
            "si_weights",
            "si-weights-histogram.svg",
            "Sample information (weights), flipped labels in red",
            "SI in nats",
        ),
        _hist(
            table,
            "si_predictions",
            "si-predictions-histogram.svg",
            "Sample information (predictions)",
            "F-SI in nats",
        ),
    ]


def _fcmi(summary: Summary, table: Any) -> list[Chart | None]:
    results = [r for r in summary.get("results") or [] if isinstance(r, dict)]
    by_n = [r for r in results if "epoch" not in r]
    label = "f-CMI bound" + (" (bias-corrected)" if summary.get("mi_estimator") == "miller_madow" else "")
    charts: list[Chart | None] = []
    if by_n:
        ns = [r.get("n") for r in by_n]
        charts.append(
            line_chart(
                "bound-vs-n.svg",
                "f-CMI bound and generalization gap vs n",
                [
                    Series(
                        label, ns, [r.get("bound_mean") for r in by_n], [r.get("bound_std") for r in by_n]
                    ),
                    Series(
                        "measured gap",
                        ns,
                        [r.get("gap_mean") for r in by_n],
                        [r.get("gap_std") for r in by_n],
                    ),
                ],
                xlabel="n (training samples)",
                ylabel="error (0-1 loss)",
                logx=True,
                xticks_at_data=True,
            )
        )
    # Per-epoch rows, where a job records them: one line pair per n.
    per_epoch = [r for r in results if "epoch" in r] + [
        r for r in summary.get("results_by_epoch") or [] if isinstance(r, dict)
    ]
    if per_epoch:
        groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for r in per_epoch:
            groups[r.get("n")].append(r)
        series = []
        for n, rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
            rows.sort(key=lambda r: r.get("epoch", 0))
            xs = [r.get("epoch") for r in rows]
            series.append(Series(f"bound, n = {n}", xs, [r.get("bound_mean") for r in rows]))
            series.append(Series(f"gap, n = {n}", xs, [r.get("gap_mean") for r in rows], dashed=True))
        charts.append(
            line_chart(
                "bound-vs-epoch.svg",
                "f-CMI bound and gap vs epoch",
                series,
                xlabel="epoch",
                ylabel="error (0-1 loss)",
            )
        )
    return charts


def _limit(summary: Summary, table: Any) -> list[Chart | None]:
    curves = summary.get("curves") or {}
    epoch = curves.get("epoch") or []
    fano = summary.get("fano") or {}
    noise = fano.get("noise_level") if fano.get("noise") == "uniform" else None
    charts: list[Chart | None] = []
    for key, title in (
        ("test_accuracy", "Test accuracy over epochs"),
        ("train_accuracy_noisy", "Train accuracy on the noisy labels"),
    ):
        series = [Series("LIMIT", epoch, curves.get(key) or [])]
        if curves.get(f"baseline_{key}"):
            series.append(Series("cross-entropy baseline", epoch, curves[f"baseline_{key}"]))
        if key == "train_accuracy_noisy" and noise is not None and epoch:
            series.append(
                Series(
                    "1 − p (clean fraction)",
                    [epoch[0], epoch[-1]],
                    [1 - noise] * 2,
                    dashed=True,
                    color="#777",
                )
            )
        charts.append(
            line_chart(
                f"{key.replace('_', '-')}.svg",
                title,
                series,
                xlabel="epoch",
                ylabel="accuracy",
                ylim=(0.0, 1.02),
                xticks_at_data=True,
            )
        )
    charts.append(
        _hist(
            table,
            "label_noise_score",
            "label-noise-score-histogram.svg",
            "LIMIT label-noise score, flipped labels in red",
        )
    )
    return charts


def _complexity_series(rows: list[dict[str, Any]], prefix: str = "") -> list[Series]:
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        target = str(r.get("target"))
        tau = r.get("temperature")
        label = prefix + (target if tau is None else f"{target}, τ = {tau:g}")
        if r.get("student_checkpoint") is not None and r.get("adjusted") is not None:
            groups[label].append((float(r["student_checkpoint"]), float(r["adjusted"])))
    out = []
    for label, pts in groups.items():
        pts.sort()
        out.append(Series(label, [p[0] for p in pts], [p[1] for p in pts]))
    return out


def _supervision_complexity(summary: Summary, table: Any) -> list[Chart | None]:
    rows = [r for r in summary.get("complexity") or [] if isinstance(r, dict)]
    return [
        line_chart(
            "complexity.svg",
            "Adjusted supervision complexity per target and checkpoint",
            _complexity_series(rows),
            xlabel="student epoch",
            ylabel="adjusted complexity",
            logy=True,
            xticks_at_data=True,
        )
    ]


def _distillation(summary: Summary, table: Any) -> list[Chart | None]:
    modes = summary.get("modes") or {}
    names = list(modes)
    charts: list[Chart | None] = [
        bar_chart(
            "accuracy-by-mode.svg",
            "Student accuracy per distillation mode (mean ± std over seeds)",
            names,
            [
                (
                    "test",
                    [modes[m].get("test_accuracy_mean") for m in names],
                    [modes[m].get("test_accuracy_std") for m in names],
                ),
                ("train", [modes[m].get("train_accuracy_mean") for m in names], None),
            ],
            ylabel="accuracy",
            ylim=(0.0, 1.05),
        )
    ]
    # The complexity curves per mode are the worker's complexity.png (one panel per mode).
    return charts


def _label_issues(summary: Summary, table: Any) -> list[Chart | None]:
    return [
        _hist(table, "label_quality", "label-quality-histogram.svg", "Label quality, flipped labels in red"),
        *_generic(summary, table),
    ]


def _generic(summary: Summary, table: Any) -> list[Chart | None]:
    if table is None:
        return []
    skip = {"index", "id", "label", "label_noisy"}
    for col in table.columns:
        if col in skip or str(col).startswith("rank") or table[col].dtype == bool:
            continue
        if table[col].dtype.kind in "fi" and len(finite(table[col].astype(float).tolist())) > 0:
            return [_hist(table, str(col), f"{col}-histogram.svg", f"{col}, flipped labels in red")]
    return []


KIND_PLOTS: dict[str, Callable[[Summary, Any], list[Chart | None]]] = {
    "training-dynamics": _training_dynamics,
    "sample-information": _sample_information,
    "fcmi-bound": _fcmi,
    "limit": _limit,
    "supervision-complexity": _supervision_complexity,
    "distillation": _distillation,
    "label-issues": _label_issues,
}


def job_charts(kind: str, summary: Summary | None, table: Any) -> list[Chart]:
    """The kind's charts, in the order a reader wants them; none for a job without results."""
    if not summary:
        return []
    charts = KIND_PLOTS.get(kind, _generic)(summary, table)
    return [c for c in charts if c is not None]
