"""The ``limit`` job kind: LIMIT training, its cross-entropy baseline, Fano's bound.

Thin: splits the dataset, calls ``infoscore.limit``, draws the curves and packs the
outputs. See docs/jobs/limit.md for the contract.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.limit import SCORE_COLUMNS
from infoscore import limit as lim
from infoscore.data import Dataset
from infoscore.models import save_safetensors
from infoscore.scores import auroc

from .base import JobContext, JobOutput, Runner, json_safe

FANO_INFO_GRID_BITS = (0.0, 0.25, 0.5, 1.0, 2.0)


def known_noise_law(dataset: Dataset, noise_level: float | None) -> tuple[str, float] | None:
    """(law name, p) when the label-noise law is known, else None.

    ``noise_level`` (the job parameter) wins and means the uniform law; otherwise a
    built-in dataset records its ``label_noise`` and ``noise`` kind in ``info``.
    """
    if noise_level is not None:
        return "uniform", float(noise_level)
    info = dataset.info or {}
    if "label_noise" in info and info.get("noise") in ("uniform", "pair"):
        return str(info["noise"]), float(info["label_noise"])
    return None


def fano_summary(
    dataset: Dataset, noise_level: float | None, train_errors: Mapping[str, float | None]
) -> tuple[float | None, dict[str, Any] | None]:
    """(fano_bound, details). fano_bound = r₀ at I = 0: the least train error on noisy
    labels of a model holding no label-noise information. details add r₀ at a few I/n
    and, per trained model, the label information its train error implies (bits/sample).
    """
    known = known_noise_law(dataset, noise_level)
    if known is None:
        return None, None
    kind, p = known
    law = lim.noise_law(kind, p, n_classes=dataset.n_classes)
    implied = {
        name: None if err is None else lim.label_information_lower_bound(law, err)
        for name, err in train_errors.items()
    }
    details = {
        "units": "bits",
        "noise": kind,
        "noise_level": p,
        "n_classes": dataset.n_classes,
        "conditional_entropy_bits": lim.entropy_bits(law),
        "min_train_error_at_info_bits_per_sample": {
            str(i): lim.fano_min_error(law, info_bits_per_sample=i) for i in FANO_INFO_GRID_BITS
        },
        "implied_label_information_bits_per_sample": implied,
    }
    return lim.fano_min_error(law), details


def plot_curves(
    path: Path,
    limit_curves: dict[str, list[float]],
    baseline_curves: dict[str, list[float]] | None,
    noise_level: float | None,
) -> None:
    """Figure 1 of the paper: train accuracy on noisy labels and test accuracy per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    panels = (("train_accuracy_noisy", "train accuracy (noisy labels)"), ("test_accuracy", "test accuracy"))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(limit_curves["epoch"], limit_curves[key], label="LIMIT")
        if baseline_curves is not None:
            ax.plot(baseline_curves["epoch"], baseline_curves[key], label="cross-entropy")
        if key == "train_accuracy_noisy" and noise_level is not None:
            ax.axhline(1.0 - noise_level, color="grey", linestyle="--", linewidth=1, label="1 − p")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.set_ylim(0.0, 1.02)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


class LimitRunner(Runner):
    kind = "limit"

    def run(self, ctx: JobContext) -> JobOutput:
        started = time.perf_counter()
        params = ctx.params
        dataset: Dataset = ctx.dataset
        spec = ctx.model_spec
        data = lim.split_from_dataset(
            dataset,
            validation_fraction=params.validation_fraction,
            clean_validation=params.clean_validation,
            seed=ctx.seed,
            device=ctx.device,
        )
        config = lim.LimitConfig(
            epochs=params.epochs,
            beta=params.beta,
            q_law=params.q_dist,
            lr=params.lr,
            batch_size=params.batch_size,
            sample_from_q=params.sample_from_q,
            warm_up=params.warm_up,
            seed=ctx.seed,
            lamb=params.lamb,
            patience=params.patience,
        ).validated("limit")
        total = config.epochs * (2 if params.baseline else 1)
        result = lim.train_limit(
            spec,
            data,
            config,
            progress=ctx.progress,
            progress_total=total,
            should_stop=ctx.should_stop,
        )
        record = result.record
        curves: dict[str, list[float]] = dict(record.curves)
        baseline: dict[str, Any] | None = None
        baseline_record = None
        if params.baseline:
            _, baseline_record = lim.train_cross_entropy(
                spec,
                data,
                epochs=config.epochs,
                lr=config.lr,
                batch_size=config.batch_size,
                seed=ctx.seed,
                patience=config.patience,
                progress=ctx.progress,
                progress_offset=config.epochs,
                progress_total=total,
                should_stop=ctx.should_stop,
            )
            baseline = baseline_record.summary()
            curves.update({f"baseline_{k}": v for k, v in baseline_record.curves.items() if k != "epoch"})

        errors = {"limit": 1.0 - record.train_accuracy_noisy}
        if baseline_record is not None:
            errors["baseline"] = 1.0 - baseline_record.train_accuracy_noisy
        fano_bound, fano = fano_summary(dataset, params.noise_level, errors)

        model_path = ctx.workdir / "model.safetensors"
        save_safetensors(
            result.classifier,
            str(model_path),
            metadata={"kind": "limit", "checkpoint": "best-validation", "epoch": str(record.best_epoch)},
        )
        known = known_noise_law(dataset, params.noise_level)
        curves_path = ctx.workdir / "curves.png"
        plot_curves(
            curves_path,
            record.curves,
            None if baseline_record is None else baseline_record.curves,
            None if known is None or known[0] != "uniform" else known[1],
        )

        in_validation = np.zeros(data.n, dtype=bool)
        in_validation[data.val_idx.cpu().numpy()] = True
        scores = pd.DataFrame(
            {
                "label_noise_score": result.scores.label_noise_score,
                "predicted_label": result.scores.predicted_label,
                "suspected_mislabeled": result.scores.suspected_mislabeled,
                "predicted_gradient_sq_norm": result.scores.predicted_gradient_sq_norm,
                "classifier_label_noise_score": result.scores.classifier_label_noise_score,
                "in_validation": in_validation,
            },
            columns=list(SCORE_COLUMNS),
        )
        mask = dataset.noisy_mask
        detection = None
        if mask is not None and 0 < int(np.sum(mask)) < mask.shape[0]:
            flags = result.scores.suspected_mislabeled
            detection = {
                "auroc_label_noise_score": auroc(result.scores.label_noise_score, mask),
                "auroc_classifier_label_noise_score": auroc(result.scores.classifier_label_noise_score, mask),
                "flag_precision": float(mask[flags].mean()) if flags.any() else None,
                "flag_recall": float(flags[mask].mean()),
            }
        summary: dict[str, Any] = {
            **record.summary(),
            "fano_bound": fano_bound,
            "noisy_label_detection": detection,
            "fano": fano,
            "baseline": baseline,
            "curves": curves,
            "n_train": data.n,
            "n_fit": int(data.fit_idx.numel()),
            "n_validation": int(data.val_idx.numel()),
            "n_test": int(data.y_test.numel()),
            "n_classes": data.n_classes,
            "n_suspected_mislabeled": int(result.scores.suspected_mislabeled.sum()),
            "settings": {
                "beta": config.beta,
                "q_dist": str(config.q_law),
                "epochs": config.epochs,
                "lr": config.lr,
                "batch_size": config.batch_size,
                "validation_fraction": params.validation_fraction,
                "clean_validation": params.clean_validation,
                "sample_from_q": config.sample_from_q,
                "warm_up": config.warm_up,
                "lamb": config.lamb,
                "patience": config.patience,
                "patience_active": config.patience is not None and data.val_idx.numel() > 0,
                "seed": ctx.seed,
                "device": str(ctx.device),
                "label_noise_score": "L1 norm ||e_y - softmax(q(x))||_1 = 2(1 - s_q[y]), final q-network",
                "predicted_label": "argmax f(x), best-validation classifier (model.safetensors)",
                "scored_rows": "all training rows, validation rows included (q never trained on those)",
                "checkpoint": "model.safetensors holds the best-validation classifier",
                "early_stopping": (
                    "best-validation checkpoint; training stops after `patience` epochs without a better "
                    "validation accuracy"
                    if config.patience is not None and data.val_idx.numel() > 0
                    else "best-validation checkpoint (last epoch without validation rows); all epochs run"
                ),
            },
            "seconds": time.perf_counter() - started,
        }
        return JobOutput(
            summary=json_safe(summary),
            scores=scores,
            files={"model.safetensors": model_path, "curves.png": curves_path},
        )
