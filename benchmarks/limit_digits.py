"""LIMIT vs cross-entropy baselines on 8x8 digits with uniform label noise (docs/science.md §4.5).

Prints one markdown table per noise level: test accuracy of the best-validation
checkpoint and at the end of training, final accuracy on the noisy (and clean) labels of
the fitting rows, AUROC for the flipped labels of ``label_noise_score`` = 2(1 − s_q[y])
and of the same score from the best-validation classifier, 2(1 − s_f[y]) ("AUROC (f)"),
precision/recall of the flag "argmax ≠ label" with the q-network's argmax and with the
classifier's (the job's ``suspected_mislabeled``), and wall time (LIMIT rows only for
the scores). Single-threaded on purpose (shared 2-core boxes).

    .venv/bin/python benchmarks/limit_digits.py --noise 0.5 0.8 --epochs 300
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infoscore.limit as limit
from infoscore import data
from infoscore.models import build_model
from infoscore.training import predict_logits, train_classifier


def _auroc(mask: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(mask, score))


def _precision_recall(flag: np.ndarray, mask: np.ndarray) -> str:
    precision = mask[flag].mean() if flag.any() else float("nan")
    recall = flag[mask].mean() if mask.any() else float("nan")
    return f"{precision:.2f}/{recall:.2f}"


def _row(name: str, rec: limit.TrainingRecord, seconds: float, **extra: str) -> dict[str, Any]:
    return {
        "method": name,
        "test (best-val)": f"{rec.test_accuracy:.3f}",
        "test (final)": f"{rec.final_test_accuracy:.3f}",
        "best epoch": str(rec.best_epoch),
        "noisy-train": f"{rec.train_accuracy_noisy:.3f}",
        "clean-train": f"{rec.train_accuracy_clean:.3f}" if rec.train_accuracy_clean is not None else "—",
        "AUROC": extra.get("auroc", "—"),
        "AUROC (f)": extra.get("auroc_f", "—"),
        "flag P/R (q)": extra.get("flag_q", "—"),
        "flag P/R (f)": extra.get("flag_f", "—"),
        "s": f"{seconds:.0f}",
    }


def _mae_loss(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the softmax, 2(1 − s[y]): the robust-loss baseline."""
    return (2.0 * (1.0 - torch.softmax(logits, 1).gather(1, y[:, None]))).mean()


def ceilings(ds: data.Dataset, split: limit.SplitData) -> list[dict[str, str]]:
    """Non-neural ceilings on the same split: logistic regression and kNN fitted on the
    noisy labels of the fitting rows, for a grid of C / k; the row picked by the noisy
    validation accuracy (what a user could do) and the range over the grid (an oracle
    upper end: picked on the clean test set)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    fit, val = split.fit_idx.numpy(), split.val_idx.numpy()
    x_fit, y_fit = ds.x_train[fit], ds.y_train[fit]
    x_val, y_val = ds.x_train[val], ds.y_train[val]
    grids: list[tuple[str, list[tuple[str, Any]]]] = [
        (
            "logistic regression",
            [(f"C = {c:g}", LogisticRegression(C=c, max_iter=5000)) for c in (0.001, 0.01, 0.1, 1.0, 10.0)],
        ),
        ("kNN", [(f"k = {k}", KNeighborsClassifier(n_neighbors=k)) for k in (1, 5, 15, 50, 100, 200)]),
    ]
    rows = []
    for name, grid in grids:
        scored = []
        for label, model in grid:
            model.fit(x_fit, y_fit)
            scored.append((float(model.score(x_val, y_val)), float(model.score(ds.x_test, ds.y_test)), label))
        val_pick = max(scored, key=lambda t: t[0])
        tests = [t[1] for t in scored]
        rows.append(
            {
                "ceiling": name,
                "picked on noisy validation": f"{val_pick[2]}: test {val_pick[1]:.3f}",
                "test range over the grid": f"{min(tests):.3f}–{max(tests):.3f}",
                "grid": ", ".join(f"{t[2]}: {t[1]:.3f}" for t in scored),
            }
        )
    return rows


def run(noise: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    ds = data.load_digits(label_noise=noise, seed=args.data_seed)
    assert ds.noisy_mask is not None
    split = limit.split_from_dataset(ds, validation_fraction=0.2, seed=args.seed)
    spec: dict[str, Any] = {"arch": "mlp", "hidden": args.hidden}
    rows = []
    law = limit.noise_law("uniform", noise, n_classes=ds.n_classes)
    print(
        f"\n## uniform noise p = {noise}: n_train = {ds.n_train} (fit {split.fit_idx.numel()}, "
        f"validation {split.val_idx.numel()}, noisy labels), n_test = {ds.n_test} (clean), "
        f"flipped = {ds.noisy_mask.mean():.3f}; Fano r0(I=0) = {limit.fano_min_error(law):.3f}",
        flush=True,
    )
    ceiling_rows = ceilings(ds, split)
    print(f"\n### ceilings, p = {noise}\n\n{to_markdown(list(ceiling_rows))}\n", flush=True)
    if args.ceilings_only:
        return []
    for q_law in args.laws:
        for beta in args.betas:
            t = time.perf_counter()
            cfg = limit.LimitConfig(epochs=args.epochs, beta=beta, q_dist=limit.QLaw(q_law), seed=args.seed)
            res = limit.train_limit(spec, split, cfg)
            pred_q = predict_logits(res.q_network, split.x).argmax(1).numpy()
            rows.append(
                _row(
                    f"LIMIT_{q_law[0].upper()} β={beta:g}",
                    res.record,
                    time.perf_counter() - t,
                    auroc=f"{_auroc(ds.noisy_mask, res.scores.label_noise_score):.3f}",
                    auroc_f=f"{_auroc(ds.noisy_mask, res.scores.classifier_label_noise_score):.3f}",
                    flag_q=_precision_recall(pred_q != ds.y_train, ds.noisy_mask),
                    flag_f=_precision_recall(res.scores.suspected_mislabeled, ds.noisy_mask),
                )
            )
            print(rows[-1], flush=True)
    baselines: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("CE", spec, {}),
        ("CE + dropout 0.5", {**spec, "dropout": 0.5}, {}),
        ("CE + weight decay 3e-3", spec, {"weight_decay": 3e-3}),
    ]
    for name, model_spec, kw in baselines:
        t = time.perf_counter()
        _, rec = limit.train_cross_entropy(model_spec, split, epochs=args.epochs, seed=args.seed, **kw)
        rows.append(_row(name, rec, time.perf_counter() - t))
        print(rows[-1], flush=True)
    # MAE: train_cross_entropy's recipe with the loss swapped in (same split, init, batches).
    t = time.perf_counter()
    tracker = limit.EpochTracker(split)
    model = build_model(spec, split.input_shape, ds.n_classes, seed=args.seed)
    train_classifier(
        model,
        split.x[split.fit_idx],
        split.y_noisy[split.fit_idx],
        epochs=args.epochs,
        batch_size=256,
        lr=1e-3,
        seed=args.seed,
        loss_fn=_mae_loss,
        on_epoch=tracker,
    )
    rows.append(_row("MAE", tracker.record, time.perf_counter() - t))
    print(rows[-1], flush=True)
    return rows


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 1.0, 10.0, 30.0, 100.0])
    parser.add_argument("--laws", nargs="+", default=["laplace", "gaussian"], choices=["laplace", "gaussian"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--seed", type=int, default=0, help="init, split and data-order seed")
    parser.add_argument("--data-seed", type=int, default=0, help="test split and label-noise seed")
    parser.add_argument("--ceilings-only", action="store_true", help="only logistic regression and kNN")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"# LIMIT on digits: device cpu (1 thread, {platform.processor() or platform.machine()}), "
        f"float32, torch {torch.__version__}, MLP 64-{'-'.join(map(str, args.hidden))}-10, "
        f"Adam 1e-3, batch 256, {args.epochs} epochs, seeds {args.seed}/{args.data_seed}"
    )
    for noise in args.noise:
        rows = run(noise, args)
        if rows:
            print(f"\n### p = {noise}\n\n{to_markdown(rows)}\n", flush=True)


if __name__ == "__main__":
    main()
