"""LIMIT at scale on the ``gaussians`` built-in with uniform label noise (issue 14).

The built-in (``infoscore.data.make_gaussians``): ``--classes`` isotropic unit-variance
blobs in ``--dim`` dimensions, means drawn from N(0, separation²/dim · I), ``--n``
balanced training rows and as many clean test rows; uniform noise ``--noise`` applied once
to the training labels. LIMIT (library defaults unless overridden) and the cross-entropy
baseline train on the job's split (20% of the rows held out with their noisy labels).

Ceilings printed first, on the same test set: ``bayes`` = nearest true class mean (the
Bayes classifier of an equal-prior isotropic mixture; the means are re-estimated from the
13,500 clean training labels, so this is the oracle with a 1,350-per-class mean estimate),
``logreg`` and ``kNN`` fitted on the noisy labels of the fitting rows (C and k chosen on
the noisy validation rows).

Prints wall and CPU seconds and peak RSS per run. Single-threaded (shared 2-core box).

    .venv/bin/python benchmarks/limit_gaussians.py                        # separation 3 and 4
    .venv/bin/python benchmarks/limit_gaussians.py --separation 4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infoscore.limit as limit
from infoscore import data


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ceilings(ds: data.Dataset, split: limit.SplitData) -> dict[str, float]:
    """Test accuracy of the oracle nearest-mean classifier, logistic regression and kNN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    assert ds.y_train_clean is not None
    means = np.stack([ds.x_train[ds.y_train_clean == c].mean(0) for c in range(ds.n_classes)])
    dist = ((ds.x_test[:, None, :] - means[None]) ** 2).sum(-1)
    out = {"bayes (nearest true mean)": float((dist.argmin(1) == ds.y_test).mean())}
    fit = split.fit_idx.numpy()
    val = split.val_idx.numpy()
    x_fit, y_fit = ds.x_train[fit], ds.y_train[fit]
    x_val, y_val = ds.x_train[val], ds.y_train[val]
    logregs = [LogisticRegression(C=c, max_iter=2000).fit(x_fit, y_fit) for c in (0.01, 0.1, 1.0, 10.0)]
    lr = max(logregs, key=lambda m: float(m.score(x_val, y_val)))
    out[f"logreg (noisy labels, C = {lr.C:g} on noisy val)"] = float(lr.score(ds.x_test, ds.y_test))
    knns = [KNeighborsClassifier(n_neighbors=k).fit(x_fit, y_fit) for k in (1, 15, 50, 150, 400)]
    knn = max(knns, key=lambda m: float(m.score(x_val, y_val)))
    out[f"kNN (noisy labels, k = {knn.n_neighbors} on noisy val)"] = float(knn.score(ds.x_test, ds.y_test))
    return out


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--separation", type=float, nargs="+", default=[3.0, 4.0])
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--n", type=int, default=13_500)
    parser.add_argument("--noise", type=float, default=0.8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="job seed = dataset seed")
    parser.add_argument("--epochs", type=int, default=None, help="default: LimitConfig's")
    parser.add_argument("--beta", type=float, default=None, help="default: LimitConfig's")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--lamb", type=float, default=None, help="turns sample_from_q on with this precision")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "beta": args.beta,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "patience": args.patience,
            "lamb": args.lamb,
            "sample_from_q": True if args.lamb is not None else None,
        }.items()
        if v is not None
    }
    spec: dict[str, Any] = {"arch": "mlp", "hidden": args.hidden}
    print(
        f"# LIMIT on gaussians: cpu (1 thread, {platform.processor() or platform.machine()}), float32, "
        f"torch {torch.__version__}, MLP {args.dim}-{'-'.join(map(str, args.hidden))}-{args.classes}, "
        f"n = {args.n}, uniform noise {args.noise}, overrides {overrides or 'none (library defaults)'}",
        flush=True,
    )
    rows = []
    for sep in args.separation:
        for seed in args.seeds:
            ds = data.make_gaussians(
                n=args.n,
                dim=args.dim,
                classes=args.classes,
                separation=sep,
                label_noise=args.noise,
                seed=seed,
            )
            split = limit.split_from_dataset(ds, validation_fraction=0.2, seed=seed)
            assert ds.noisy_mask is not None
            flipped = float(ds.noisy_mask.mean())
            print(f"\n## separation {sep:g}, seed {seed}: flipped = {flipped:.3f}", flush=True)
            for name, acc in ceilings(ds, split).items():
                print(f"ceiling {name}: test {acc:.3f}", flush=True)
            cfg = limit.LimitConfig(seed=seed, **overrides)  # type: ignore[arg-type]
            w, c = time.perf_counter(), time.process_time()
            res = limit.train_limit(spec, split, cfg)
            rec = res.record
            row = {
                "separation": f"{sep:g}",
                "seed": str(seed),
                "LIMIT final test": _fmt(rec.final_test_accuracy),
                "LIMIT best-val test": _fmt(rec.test_accuracy),
                "noisy-train": _fmt(rec.train_accuracy_noisy),
                "epochs run": str(len(rec.curves["epoch"])),
                "LIMIT wall s": f"{time.perf_counter() - w:.0f}",
                "LIMIT cpu s": f"{time.process_time() - c:.0f}",
            }
            every = max(1, len(rec.curves["epoch"]) // 6)
            trace = ", ".join(
                f"{int(e)}: {t:.3f}/{r:.3f}"
                for e, t, r in zip(
                    rec.curves["epoch"],
                    rec.curves["test_accuracy"],
                    rec.curves["train_accuracy_noisy"],
                    strict=True,
                )
                if int(e) % every == 0
            )
            print(f"LIMIT test/noisy-train by epoch: {trace}", flush=True)
            print(row, flush=True)
            if not args.no_baseline:
                w = time.perf_counter()
                _, ce = limit.train_cross_entropy(
                    spec,
                    split,
                    epochs=cfg.epochs,
                    lr=cfg.lr,
                    batch_size=cfg.batch_size,
                    seed=seed,
                    patience=cfg.patience,
                )
                row |= {
                    "CE final test": _fmt(ce.final_test_accuracy),
                    "CE best-val test": _fmt(ce.test_accuracy),
                    "CE noisy-train": _fmt(ce.train_accuracy_noisy),
                    "CE wall s": f"{time.perf_counter() - w:.0f}",
                }
            row["peak RSS MiB"] = f"{_rss_mib():.0f}"
            rows.append(row)
            print(row, flush=True)
    head = list(rows[0])
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r.get(h, "—") for h in head) + " |")


if __name__ == "__main__":
    main()
