"""The ``label-issues`` job kind: flags, suggested labels, a noise-matrix estimate and
per-row decisions (docs/jobs/label-issues.md).

Thin: params -> ``LabelIssuesConfig`` -> ``infoscore.label_issues.find_label_issues`` ->
the scores table, ``decisions.csv`` and (for a built-in source) ``source.npz``, the arrays
a derived dataset is cut from.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.label_issues import DECISION_COLUMNS, DECISIONS_ARTIFACT, SCORE_COLUMNS, SOURCE_ARTIFACT
from infoscore.data import Dataset
from infoscore.label_issues import LabelIssuesConfig, find_label_issues

from .base import JobContext, JobOutput, Runner, json_safe


def known_true_labels(dataset: Dataset) -> np.ndarray | None:
    """The clean labels when known: built-ins record them (or that none was flipped)."""
    if dataset.y_train_clean is not None:
        return np.asarray(dataset.y_train_clean)
    if dataset.noisy_mask is not None and not np.any(dataset.noisy_mask):
        return np.asarray(dataset.y_train)
    return None


def class_names(dataset: Dataset) -> list[str] | None:
    """The upload's class names (``info['class_names']``), when it had string labels."""
    names = (dataset.info or {}).get("class_names")
    if isinstance(names, list | tuple) and len(names) == dataset.n_classes:
        return [str(v) for v in names]
    return None


def _named(labels: np.ndarray, names: list[str] | None, missing: int | None = None) -> Any:
    """Integer labels -> the user's class names (``missing`` -> empty)."""
    if names is None:
        if missing is None:
            return labels
        nullable = pd.array(labels, dtype="Int64")
        nullable[labels == missing] = pd.NA
        return nullable
    lookup = np.asarray(names, dtype=object)
    out = lookup[np.clip(labels, 0, len(names) - 1)]
    if missing is not None:
        out = np.where(labels == missing, None, out)
    return out


def source_npz(dataset: Dataset) -> bytes:
    """The dataset's arrays in the canonical upload layout (x, y, x_test, y_test, ids?,
    n_classes, input_shape)."""
    arrays: dict[str, np.ndarray] = {
        "x": np.ascontiguousarray(dataset.x_train, dtype=np.float32).reshape(dataset.n_train, -1),
        "y": np.asarray(dataset.y_train, dtype=np.int64),
        "x_test": np.ascontiguousarray(dataset.x_test, dtype=np.float32).reshape(dataset.n_test, -1),
        "y_test": np.asarray(dataset.y_test, dtype=np.int64),
        "n_classes": np.asarray(dataset.n_classes, dtype=np.int64),
        "input_shape": np.asarray(dataset.input_shape, dtype=np.int64).reshape(-1),
    }
    if dataset.ids is not None:
        arrays["ids"] = np.asarray(dataset.ids).astype(str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


class LabelIssuesRunner(Runner):
    kind = "label-issues"

    def run(self, ctx: JobContext) -> JobOutput:
        started = time.perf_counter()
        p = ctx.params
        ds: Dataset = ctx.dataset
        config = LabelIssuesConfig(
            method=p.method,
            threshold=p.threshold,
            folds=p.folds,
            epochs=p.epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            weight_decay=p.weight_decay,
            beta=p.beta,
            q_law=p.q_dist,
            relabel_confidence=p.relabel_confidence,
            seed=ctx.seed,
        )
        res = find_label_issues(
            ctx.model_spec,
            ds.x_train,
            ds.y_train,
            n_classes=ds.n_classes,
            config=config,
            device=ctx.device,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
        )
        names = class_names(ds)
        columns: dict[str, Any] = {
            "given_label": _named(res.given_label, names),
            "suggested_label": _named(res.suggested_label, names),
            "suggested_label_confidence": res.suggested_label_confidence,
            "label_quality": res.label_quality,
            "is_label_issue": res.is_label_issue,
            "issue_rank": res.issue_rank,
        }
        columns.update(res.scores)
        scores = pd.DataFrame(columns, columns=[*SCORE_COLUMNS, *res.scores])

        decisions = pd.DataFrame(
            {
                "index": np.arange(ds.n_train),
                "id": ds.ids if ds.ids is not None else np.full(ds.n_train, None, dtype=object),
                "action": res.action.astype(str),
                "new_label": _named(res.new_label, names, missing=-1),
            },
            columns=list(DECISION_COLUMNS),
        )
        files: dict[str, bytes | Path] = {DECISIONS_ARTIFACT: decisions.to_csv(index=False).encode()}
        if not isinstance(ctx.request.dataset, str):
            files[SOURCE_ARTIFACT] = source_npz(ds)

        cl = res.confident
        actions = {a: int((res.action == a).sum()) for a in ("keep", "drop", "relabel")}
        summary: dict[str, Any] = {
            "n_issues": res.n_issues,
            "estimated_noise_rate": cl.estimated_noise_rate,
            "noise_matrix": cl.noise_matrix.tolist(),
            "noise_matrix_axes": "rows = given label, columns = true label: P(given = i | true = j)",
            "method": str(res.method),
            "folds": res.folds,
            "threshold": str(res.threshold),
            "thresholds": cl.thresholds.tolist(),
            "confident_joint": cl.confident_joint.tolist(),
            "actions": actions,
            "class_names": names,
            "n_train": ds.n_train,
            "n_classes": ds.n_classes,
            "trainings": res.trainings,
            "epochs": res.epochs,
            "score_columns": list(res.scores),
            "settings": {
                "method": str(res.method),
                "folds": p.folds,
                "threshold": str(res.threshold),
                "epochs": p.epochs,
                "lr": p.lr,
                "batch_size": p.batch_size,
                "weight_decay": p.weight_decay,
                "beta": p.beta,
                "q_dist": p.q_dist,
                "relabel_confidence": p.relabel_confidence,
                "seed": ctx.seed,
                "device": str(ctx.device),
                "checkpoint": "final weights of every model (no validation split, no checkpoint choice)",
            },
        }
        truth = known_true_labels(ds)
        if truth is not None:
            summary.update(res.evaluate(truth))
        summary["seconds"] = time.perf_counter() - started
        return JobOutput(summary=json_safe(summary), scores=scores, files=files)
