"""Label issues: infoscore's methods next to cleanlab's ``find_label_issues``, same data.

For each dataset, noise law and seed: inject label noise into the training split, run
infoscore's ``find_label_issues`` (``limit``, ``cross-entropy-cv``, their ``ensemble``;
``limit-cv`` with ``--limit-cv``) and cleanlab 2.x's ``filter.find_label_issues`` on 5-fold
``pred_probs`` of scikit-learn's logistic regression and MLP, then retrain one downstream
model on each cleaned set (flagged rows dropped; for infoscore also its drop-and-relabel
decisions) and measure it on the clean test split. cleanlab is a benchmark-only
dependency (``pip install -e '.[bench]'``); none of its code is in infoscore.

    python benchmarks/label_issues.py --datasets digits --noise uniform:0.2 --seeds 0 1 2

Prints one row per (dataset, noise, seed, method), then means over seeds, wall and CPU
seconds per method and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from infoscore import data as isdata
from infoscore.label_issues import LabelIssuesConfig, decide, find_label_issues
from infoscore.models import build_model
from infoscore.scores import auroc
from infoscore.training import as_tensor, predict_logits, train_classifier

SPEC = {"arch": "mlp", "hidden": [256]}
DOWNSTREAM_EPOCHS = 60


def load(name: str, kind: str, rate: float, seed: int) -> isdata.Dataset:
    if name == "digits":
        return isdata.load_digits(label_noise=rate, noise=kind, seed=seed)
    # 10 Gaussian classes in 20 dimensions, 2000 train / 1000 test rows.
    return isdata.make_gaussians(
        n=2000, dim=20, classes=10, separation=4.0, n_test=1000, label_noise=rate, noise=kind, seed=seed
    )


def downstream_accuracy(ds: isdata.Dataset, keep: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Test accuracy of an MLP [256] (Adam 1e-3, batch 128, 60 epochs) trained on the kept rows."""
    dev = torch.device("cpu")
    model = build_model(SPEC, ds.input_shape, ds.n_classes, seed=seed + 7)
    x = as_tensor(ds.x_train[keep], dev)
    y = as_tensor(labels[keep], dev, torch.int64)
    train_classifier(model, x, y, epochs=DOWNSTREAM_EPOCHS, batch_size=128, lr=1e-3, seed=seed + 7)
    pred = predict_logits(model, as_tensor(ds.x_test, dev)).argmax(1).numpy()
    return float((pred == ds.y_test).mean())


def detection(flags: np.ndarray, quality: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    p = float(noisy[flags].mean()) if flags.any() else float("nan")
    r = float(flags[noisy].mean())
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"auroc": auroc(1.0 - quality, noisy), "precision": p, "recall": r, "f1": f1}


def cleanlab_rows(ds: isdata.Dataset, seed: int, mlp_probs: np.ndarray) -> dict[str, dict[str, Any]]:
    """cleanlab's ``find_label_issues`` (its defaults) and self-confidence quality scores on
    5-fold pred_probs of scikit-learn's logistic regression and of an MLP. The MLP
    pred_probs are ``mlp_probs``: infoscore's ``cross-entropy-cv`` ones (5 stratified folds,
    MLP [256], Adam, 60 epochs), so this row and that one differ only in the
    confident-learning code (scikit-learn's MLPClassifier ran ~10 min per fold here under
    load)."""
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    lr_probs = cross_val_predict(
        LogisticRegression(max_iter=2000), ds.x_train, ds.y_train, cv=cv, method="predict_proba"
    )
    cost = {"cleanlab + 5-fold logistic": (time.perf_counter() - t0, time.process_time() - c0)}
    cost["cleanlab + 5-fold MLP"] = (0.0, 0.0)
    for name, probs in (("cleanlab + 5-fold logistic", lr_probs), ("cleanlab + 5-fold MLP", mlp_probs)):
        t1, c1 = time.perf_counter(), time.process_time()
        flags = cl_find(labels=ds.y_train, pred_probs=probs, n_jobs=1)
        quality = get_label_quality_scores(ds.y_train, probs)
        out[name] = {
            "flags": np.asarray(flags, dtype=bool),
            "quality": np.asarray(quality),
            "wall": cost[name][0] + time.perf_counter() - t1,
            "cpu": cost[name][1] + time.process_time() - c1,
        }
    return out


def stability(args: argparse.Namespace) -> None:
    """Same noisy data (data seed 0), model seeds ``--seeds``: flags per seed and the
    pairwise Jaccard overlap of the flag sets, for each infoscore method asked."""
    torch.set_num_threads(args.threads)
    print(f"flag stability across model seeds {args.seeds}, data seed 0, MLP {SPEC['hidden']}")
    print("| dataset | noise | method | seed | AUROC | flag P | flag R | n flags |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for name in args.datasets:
        for spec in args.noise:
            kind, rate_s = spec.split(":")
            ds = load(name, kind, float(rate_s), 0)
            assert ds.y_train_clean is not None
            noisy = ds.y_train_clean != ds.y_train
            for method in args.methods:
                flag_sets = []
                for seed in args.seeds:
                    res = find_label_issues(
                        SPEC,
                        ds.x_train,
                        ds.y_train,
                        n_classes=ds.n_classes,
                        config=LabelIssuesConfig(method=method, seed=seed),
                    )
                    det = detection(res.is_label_issue, res.label_quality, noisy)
                    flag_sets.append(set(np.flatnonzero(res.is_label_issue).tolist()))
                    print(
                        f"| {name} | {spec} | {method} | {seed} | {det['auroc']:.4f} | {det['precision']:.3f} "
                        f"| {det['recall']:.3f} | {res.n_issues} |",
                        flush=True,
                    )
                pairs = [
                    len(a & b) / max(len(a | b), 1)
                    for i, a in enumerate(flag_sets)
                    for b in flag_sets[i + 1 :]
                ]
                summary.append((name, spec, method, min(pairs), float(np.mean(pairs))))
    print("\n| dataset | noise | method | Jaccard of flag sets, min / mean over seed pairs |")
    print("|---|---|---|---|")
    for name, spec, method, lo, mean in summary:
        print(f"| {name} | {spec} | {method} | {lo:.3f} / {mean:.3f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB")


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    print(
        f"label issues: {platform.machine()} CPU, {args.threads} torch thread(s), torch {torch.__version__}, "
        f"MLP {SPEC['hidden']} for every infoscore model and the downstream model ({DOWNSTREAM_EPOCHS} epochs)"
    )
    header = (
        "| dataset | noise | seed | method | AUROC | flag P | flag R | F1 | est. noise | true noise "
        "| sugg. acc | test acc (drop) | test acc (decisions) | s |"
    )
    print(header)
    print("|" + "---|" * 14)
    agg: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    for name in args.datasets:
        for spec in args.noise:
            kind, rate_s = spec.split(":")
            rate = float(rate_s)
            for seed in args.seeds:
                ds = load(name, kind, rate, seed)
                assert ds.y_train_clean is not None
                truth = ds.y_train_clean
                noisy = truth != ds.y_train
                rows: dict[str, dict[str, Any]] = {}
                probs: dict[str, np.ndarray] = {}
                methods = ["limit", "cross-entropy-cv"] + (["limit-cv"] if args.limit_cv else [])
                if args.only is not None:
                    methods = args.only
                for method in methods:
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = find_label_issues(
                        SPEC,
                        ds.x_train,
                        ds.y_train,
                        n_classes=ds.n_classes,
                        config=LabelIssuesConfig(method=method, seed=seed),
                    )
                    probs[method] = res.pred_probs
                    rows[method] = {
                        "flags": res.is_label_issue,
                        "quality": res.label_quality,
                        "action": res.action,
                        "new_label": res.new_label,
                        "suggested": res.suggested_label,
                        "est": res.confident.estimated_noise_rate,
                        "wall": time.perf_counter() - t0,
                        "cpu": time.process_time() - c0,
                    }
                # The ensemble method is exactly the mean of these two (same seeds).
                if {"limit", "cross-entropy-cv"} <= set(probs):
                    cl, cols = decide((probs["limit"] + probs["cross-entropy-cv"]) / 2.0, ds.y_train)
                    rows["ensemble"] = {
                        "flags": cols["is_label_issue"],
                        "quality": cols["label_quality"],
                        "action": cols["action"],
                        "new_label": cols["new_label"],
                        "suggested": cols["suggested_label"],
                        "est": cl.estimated_noise_rate,
                        "wall": rows["limit"]["wall"] + rows["cross-entropy-cv"]["wall"],
                        "cpu": rows["limit"]["cpu"] + rows["cross-entropy-cv"]["cpu"],
                    }
                if not args.no_cleanlab:
                    rows.update(cleanlab_rows(ds, seed, probs["cross-entropy-cv"]))
                all_keep = np.ones(ds.n_train, dtype=bool)
                baselines = {}
                if not args.no_downstream:
                    baselines = {
                        "no cleaning": downstream_accuracy(ds, all_keep, ds.y_train, seed),
                        "oracle (clean labels)": downstream_accuracy(ds, all_keep, truth, seed),
                    }
                for label, acc in baselines.items():
                    print(
                        f"| {name} | {spec} | {seed} | {label} | | | | | | {noisy.mean():.3f} | | {acc:.3f} | | |"
                    )
                    agg[(name, spec, label)].append({"test_drop": acc})
                for method, row in rows.items():
                    det = detection(row["flags"], row["quality"], noisy)
                    skip = args.no_downstream or (
                        args.downstream_default_only and method in ("cross-entropy-cv", "ensemble")
                    )
                    acc_drop = (
                        float("nan") if skip else downstream_accuracy(ds, ~row["flags"], ds.y_train, seed)
                    )
                    acc_dec = float("nan")
                    sugg = float("nan")
                    if "action" in row and not skip:
                        keep = row["action"] != "drop"
                        labels = np.where(row["action"] == "relabel", row["new_label"], ds.y_train)
                        acc_dec = downstream_accuracy(ds, keep, labels, seed)
                    if "action" in row:
                        f = row["flags"]
                        sugg = float((row["suggested"][f] == truth[f]).mean()) if f.any() else float("nan")
                    est = row.get("est", float("nan"))
                    print(
                        f"| {name} | {spec} | {seed} | {method} | {det['auroc']:.4f} | {det['precision']:.3f} "
                        f"| {det['recall']:.3f} | {det['f1']:.3f} | {est:.3f} | {noisy.mean():.3f} | {sugg:.3f} "
                        f"| {acc_drop:.3f} | {acc_dec:.3f} | {row['wall']:.1f} |",
                        flush=True,
                    )
                    agg[(name, spec, method)].append(
                        {
                            **det,
                            "test_drop": acc_drop,
                            "test_dec": acc_dec,
                            "wall": row["wall"],
                            "cpu": row["cpu"],
                        }
                    )
    print("\nmeans over seeds (min over seeds in brackets for AUROC, P, R)")
    print(
        "| dataset | noise | method | AUROC | flag P | flag R | F1 | test acc (drop) | test acc (decisions) | wall s | CPU s |"
    )
    print("|" + "---|" * 11)
    for (name, spec, method), runs in agg.items():

        def m(key: str, runs: list[dict[str, float]] = runs) -> str:
            vals = [r[key] for r in runs if key in r]
            return f"{np.mean(vals):.3f}" if vals and np.all(np.isfinite(vals)) else ""

        def mm(key: str, runs: list[dict[str, float]] = runs) -> str:
            vals = [r[key] for r in runs if key in r]
            return f"{np.mean(vals):.3f} ({np.min(vals):.3f})" if vals else ""

        print(
            f"| {name} | {spec} | {method} | {mm('auroc')} | {mm('precision')} | {mm('recall')} | {m('f1')} "
            f"| {m('test_drop')} | {m('test_dec')} | {m('wall')} | {m('cpu')} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB; seeds {args.seeds}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", default=["digits", "gaussians"], choices=["digits", "gaussians"]
    )
    parser.add_argument(
        "--noise", nargs="+", default=["uniform:0.1", "uniform:0.2", "uniform:0.4", "pair:0.2"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--limit-cv", action="store_true", help="also run 5-fold LIMIT (5 LIMIT trainings)")
    parser.add_argument("--no-cleanlab", action="store_true")
    parser.add_argument("--no-downstream", action="store_true", help="detection numbers only")
    parser.add_argument("--only", nargs="+", default=None, help="infoscore methods to run (default: all)")
    parser.add_argument(
        "--downstream-default-only",
        action="store_true",
        help="retrain the downstream model only for the default method and cleanlab (saves time)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--stability", action="store_true", help="flag stability across model seeds on one noisy draw"
    )
    parser.add_argument("--methods", nargs="+", default=["limit"], help="methods for --stability")
    args = parser.parse_args()
    if args.stability:
        stability(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
