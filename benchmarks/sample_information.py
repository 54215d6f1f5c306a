"""Benchmarks of the sample-information job (SI / F-SI). Prints measured numbers.

Each case runs in its own process so that peak memory (ru_maxrss) belongs to that case:

    .venv/bin/python benchmarks/sample_information.py exact --n 1000 --save /tmp/exact.npy
    .venv/bin/python benchmarks/sample_information.py loop --n 1000 --loop-samples 20
    .venv/bin/python benchmarks/sample_information.py projected --n 50000 --d 1024
    .venv/bin/python benchmarks/sample_information.py projected --n 1000 --compare /tmp/exact.npy
    .venv/bin/python benchmarks/sample_information.py mislabel --noise 0.1 0.2 0.4
    .venv/bin/python benchmarks/sample_information.py groundtruth --arch mlp --t 1000

Cores are shared, so torch uses ``--threads`` threads (default 1). Timings are wall time
on this machine (CPU, float32 Jacobians, float64 kernel algebra).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from typing import Any

import numpy as np
import torch

from infoscore import data, models
from infoscore import ground_truth as gt
from infoscore.linearized import cholesky_with_jitter, one_hot
from infoscore.ntk import per_sample_jacobians
from infoscore.sample_info import sample_information

START = time.perf_counter()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def header(args: argparse.Namespace) -> None:
    print(
        f"# {args.case}: torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, float32 Jacobians / float64 algebra"
    )


def synthetic(n: int, dim: int, k: int, n_test: int, seed: int = 0) -> data.Dataset:
    return data.make_gaussians(
        n=n, dim=dim, classes=k, separation=3.0, n_test=n_test, label_noise=0.1, seed=seed
    )


def mlp(hidden: list[int], dim: int, k: int, seed: int = 0) -> torch.nn.Module:
    return models.build_model({"arch": "mlp", "hidden": hidden}, (dim,), k, seed=seed)


def case_exact(args: argparse.Namespace) -> None:
    ds = synthetic(args.n, args.dim, args.k, args.m, seed=args.seed)
    model = mlp(args.hidden, args.dim, args.k)
    tic = time.perf_counter()
    res = sample_information(
        model,
        torch.tensor(ds.x_train),
        torch.tensor(ds.y_train),
        k=args.k,
        x_eval=torch.tensor(ds.x_test),
        y_eval=torch.tensor(ds.y_test),
        t=None,
    )
    wall = time.perf_counter() - tic
    assert res.si_weights is not None
    if args.save:
        assert res.si_predictions is not None
        np.save(args.save, np.stack([res.si_weights, res.si_predictions]))
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in res.info["timings"].items())
    print("| path | n | k | p | m | wall s | peak RSS GiB | jitter | cond(A) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| exact t=inf (one Cholesky) | {args.n} | {args.k} | {res.info['p']} | {res.info['m']} | {wall:.1f} | "
        f"{peak_rss_gib():.2f} | {res.info['jitter']:.2g} | {res.info['cond_A']:.3g} |"
    )
    print(f"stages: {timings}; train acc {res.train_accuracy:.3f}, test acc {res.test_accuracy:.3f}")


def case_loop(args: argparse.Namespace) -> None:
    """The official-code shape: per sample, downdate A⁻¹ by the sample's k rows (a Schur
    complement, O((nk)²)), solve for the LOO coefficients and map them to Δw and Δf."""
    ds = synthetic(args.n, args.dim, args.k, args.m, seed=args.seed)
    model = mlp(args.hidden, args.dim, args.k)
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    tic = time.perf_counter()
    jac = per_sample_jacobians(model, x).double().reshape(args.n * args.k, -1)
    jac_eval = per_sample_jacobians(model, torch.tensor(ds.x_test)).double().reshape(-1, jac.shape[1])
    theta = jac @ jac.T
    with torch.no_grad():
        r0 = model(x).double().reshape(-1) - one_hot(y, args.k).reshape(-1)
    lam = 1e-3 * float(torch.trace(theta)) / (args.n * args.k)
    a = theta + lam * torch.eye(theta.shape[0], dtype=torch.float64)
    p_inv = torch.cholesky_inverse(cholesky_with_jitter(a).factor)
    u = p_inv @ r0
    setup = time.perf_counter() - tic
    tic = time.perf_counter()
    big_n, k = args.n * args.k, args.k
    for i in range(args.loop_samples):
        keep = torch.ones(big_n, dtype=torch.bool)
        keep[i * k : (i + 1) * k] = False
        p_kk = p_inv[keep][:, keep]
        p_ki = p_inv[keep][:, ~keep]
        down = p_kk - p_ki @ torch.linalg.solve(p_inv[~keep][:, ~keep], p_ki.T)  # (A₋ᵢ)⁻¹
        delta = u.clone()
        delta[keep] -= down @ r0[keep]
        dw = jac.T @ delta
        _ = float((dw**2).sum()), float(((jac_eval @ dw) ** 2).sum())
    per_sample = (time.perf_counter() - tic) / args.loop_samples
    print("| path | n | k | setup s | per sample s | extrapolated total s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| per-sample downdate loop ({args.loop_samples} samples timed) | {args.n} | {args.k} | {setup:.1f} | "
        f"{per_sample:.2f} | {setup + per_sample * args.n:.0f} | {peak_rss_gib():.2f} |"
    )


def case_projected(args: argparse.Namespace) -> None:
    ds = synthetic(args.n, args.dim, args.k, args.m, seed=args.seed)
    model = mlp(args.hidden, args.dim, args.k)
    tic = time.perf_counter()
    res = sample_information(
        model,
        torch.tensor(ds.x_train),
        torch.tensor(ds.y_train),
        k=args.k,
        x_eval=torch.tensor(ds.x_test),
        y_eval=torch.tensor(ds.y_test),
        t=None,
        method="projected",
        projection_dim=args.d,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    wall = time.perf_counter() - tic
    assert res.si_weights is not None and res.si_predictions is not None
    rho_w = rho_f = float("nan")
    if args.compare:
        ref = np.load(args.compare)
        rho_w = gt.spearman(res.si_weights, ref[0])
        rho_f = gt.spearman(res.si_predictions, ref[1])
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in res.info["timings"].items())
    print(
        "| path | n | k | p | d | m | wall s | peak RSS GiB | Spearman SI vs exact | Spearman F-SI vs exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| projected t=inf | {args.n} | {args.k} | {res.info['p']} | {args.d} | {res.info['m']} | {wall:.1f} | "
        f"{peak_rss_gib():.2f} | {rho_w:.3f} | {rho_f:.3f} |"
    )
    print(f"stages: {timings}; train acc {res.train_accuracy:.3f}, test acc {res.test_accuracy:.3f}")


def _metrics(scores: np.ndarray, noisy: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(roc_auc_score(noisy, scores)), float(average_precision_score(noisy, scores))


def _baselines(ds: data.Dataset, seed: int) -> dict[str, np.ndarray]:
    """EL2N (epoch 5) and final loss of a cross-entropy MLP (64-512-10, Adam, 60 epochs), and
    cleanlab self-confidence from 5-fold out-of-sample probabilities of the same MLP."""
    from infoscore.training import predict_logits, train_classifier

    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    k = ds.n_classes
    snapshots: dict[int, torch.Tensor] = {}

    def on_epoch(e: int, model: torch.nn.Module) -> None:
        if e in (5,):
            snapshots[e] = predict_logits(model, x)

    model = mlp([512], 64, k, seed=seed)
    train_classifier(model, x, y, epochs=60, batch_size=64, lr=1e-3, seed=seed, on_epoch=on_epoch)
    final = predict_logits(model, x)
    loss = torch.nn.functional.cross_entropy(final, y, reduction="none").numpy()
    el2n = (torch.softmax(snapshots[5], 1) - torch.nn.functional.one_hot(y, k)).norm(dim=1).numpy()
    out = {"el2n (epoch 5)": el2n, "loss (epoch 60)": loss}
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        return out
    probs = np.zeros((y.numel(), k))
    folds = np.random.default_rng(seed).permutation(y.numel()) % 5
    for f in range(5):
        tr, te = folds != f, folds == f
        fold_model = mlp([512], 64, k, seed=seed)
        train_classifier(fold_model, x[tr], y[tr], epochs=60, batch_size=64, lr=1e-3, seed=seed)
        probs[te] = torch.softmax(predict_logits(fold_model, x[te]), 1).numpy()
    quality = get_label_quality_scores(ds.y_train, probs, method="self_confidence")
    out["cleanlab self-confidence"] = -quality
    return out


def case_mislabel(args: argparse.Namespace) -> None:
    print("| noise | score | AUROC | AP | seconds |")
    print("|---|---|---|---|---|")
    for rate in args.noise:
        ds = data.load_digits(label_noise=rate, seed=args.seed)
        assert ds.noisy_mask is not None
        model = models.build_model({"arch": "mlp", "hidden": args.hidden}, (1, 8, 8), 10, seed=args.seed)
        tic = time.perf_counter()
        m = min(args.m, ds.n_test)
        res = sample_information(
            model,
            torch.tensor(ds.x_train),
            torch.tensor(ds.y_train),
            k=10,
            x_eval=torch.tensor(ds.x_test[:m]),
            y_eval=torch.tensor(ds.y_test[:m]),
            t=None,
            method=args.method,
            projection_dim=args.d,
            l2_auto_scale=args.l2_auto_scale,
        )
        wall = time.perf_counter() - tic
        scores: dict[str, Any] = {"si_weights": res.si_weights, "si_predictions": res.si_predictions}
        for name, values in scores.items():
            auc, ap = _metrics(values, ds.noisy_mask)
            print(f"| {rate:.0%} | {name} | {auc:.3f} | {ap:.3f} | {wall:.0f} |")
        print(
            f"<!-- method {args.method}, d={args.d if args.method == 'projected' else '-'}, "
            f"l2_auto_scale={args.l2_auto_scale:g}, n={ds.n_train}, flipped={int(ds.noisy_mask.sum())}, "
            f"linearized test acc {res.test_accuracy:.3f}, lam={res.info['lam']:.3g} -->"
        )
        if args.no_baselines:
            continue
        tic = time.perf_counter()
        base = _baselines(ds, args.seed)
        wall = time.perf_counter() - tic
        for name, values in base.items():
            auc, ap = _metrics(values, ds.noisy_mask)
            print(f"| {rate:.0%} | {name} | {auc:.3f} | {ap:.3f} | {wall:.0f} |")


def case_groundtruth(args: argparse.Namespace) -> None:
    ds = data.load_digits(classes=[4, 9], label_noise=0.1, seed=args.seed)
    spec: dict[str, Any] = {"arch": args.arch}
    if args.arch == "mlp":
        spec["hidden"] = args.hidden
    model = models.build_model(spec, (1, 8, 8), 2, seed=args.seed)
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    xe = torch.tensor(ds.x_test)
    tic = time.perf_counter()
    res = sample_information(
        model, x, y, k=2, x_eval=xe, y_eval=torch.tensor(ds.y_test), t=args.t, lr=args.lr, l2=args.l2
    )
    est = time.perf_counter() - tic
    assert res.si_weights is not None
    indices = gt.choose_subset(ds.n_train, args.subset, args.seed)
    tic = time.perf_counter()
    actual = gt.network_loo(
        model,
        x,
        y,
        k=2,
        indices=indices,
        t=args.t,
        lr=args.lr,
        l2=res.info["l2"],
        x_eval=xe,
        progress=lambda done, total: (
            print(f"  retrained {done}/{total}", flush=True) if done % 10 == 0 else None
        ),
    )
    wall = time.perf_counter() - tic
    report = gt.compare(res.si_weights, actual, res.si_predictions)
    print(
        "| model | n | p | t | lr | l2 | subset | Pearson Δw | Spearman Δw | Pearson Δf | Spearman Δf | "
        "lin. test acc | estimate s | retrain s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    name = f"mlp {args.hidden}" if args.arch == "mlp" else "cnn [16, 32] / 64"
    print(
        f"| {name} | {ds.n_train} | {res.info['p']} | {args.t} | {args.lr:g} | {res.info['l2']:.3g} | "
        f"{report['subset']} | {report['pearson_weights']:.3f} | {report['spearman_weights']:.3f} | "
        f"{report['pearson_predictions']:.3f} | {report['spearman_predictions']:.3f} | {res.test_accuracy:.3f} | "
        f"{est:.0f} | {wall:.0f} |"
    )


def case_sweep(args: argparse.Namespace) -> None:
    """Projected vs exact SI at equal λ = scale·tr(Θ)/(nk), for several scales and d.

    Θ, its Cholesky and Φ are formed once per (scale, d); kernel-level functions only.
    """
    from infoscore.ntk import ntk_gram
    from infoscore.projection import (
        KroneckerProjector,
        kronecker_features,
        projected_features,
        projector_for,
        trace_shares,
    )
    from infoscore.sample_info import loo_infinite, loo_primal

    ds = synthetic(args.n, args.dim, args.k, args.m, seed=args.seed)
    model = mlp(args.hidden, args.dim, args.k)
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    big_n = args.n * args.k
    tic = time.perf_counter()
    theta = ntk_gram(model, x)  # structured (per-layer factors), float64
    print(f"# structured Θ ({big_n}²): {time.perf_counter() - tic:.1f} s", flush=True)
    with torch.no_grad():
        r0 = model(x).double().reshape(-1) - one_hot(y, args.k).reshape(-1)
    mean_diag = float(torch.trace(theta)) / big_n
    features: dict[tuple[str, int], Any] = {}
    for structure in args.structures:
        for d in args.dims:
            if structure == "kronecker":
                features[structure, d] = kronecker_features(
                    model,
                    x,
                    KroneckerProjector(model, d, seed=args.seed, weights=trace_shares(model, x[:512])),
                )
            else:
                features[structure, d] = projected_features(
                    model, x, projector_for(model, d, seed=args.seed)
                ).reshape(big_n, d)
    print(
        "| n | k | p | scale (λ = scale·tr Θ/(nk)) | projection | d | Spearman SI (proj vs exact) "
        "| exact wall s | proj wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for scale in args.scales:
        lam = scale * mean_diag
        tic = time.perf_counter()
        exact = loo_infinite(theta, r0, k=args.k, lam=lam).sq_weight_change.numpy()
        t_exact = time.perf_counter() - tic
        for (structure, _d), phi in features.items():
            tic = time.perf_counter()
            proj = loo_primal(phi, r0, k=args.k, lam=lam).sq_weight_change.numpy()
            t_proj = time.perf_counter() - tic
            rho = gt.spearman(proj, exact)
            p = sum(q.numel() for q in model.parameters())
            print(
                f"| {args.n} | {args.k} | {p} | {scale:g} | {structure} | {phi.shape[1]} | {rho:.3f} "
                f"| {t_exact:.0f} | {t_proj:.0f} |",
                flush=True,
            )
    print(
        f"# process: wall {time.perf_counter() - START:.0f} s, CPU {cpu_seconds():.0f} s, peak RSS {peak_rss_gib():.2f} GiB"
    )


CASES = {
    "exact": case_exact,
    "loop": case_loop,
    "projected": case_projected,
    "mislabel": case_mislabel,
    "groundtruth": case_groundtruth,
    "sweep": case_sweep,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--m", type=int, default=1000, help="held-out inputs for F-SI")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", default="")
    parser.add_argument("--compare", default="")
    parser.add_argument("--loop-samples", type=int, default=20)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--t", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--subset", type=int, default=50)
    parser.add_argument("--method", choices=["exact", "projected"], default="exact")
    parser.add_argument("--l2-auto-scale", type=float, default=1e-3)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--scales", type=float, nargs="+", default=[1e-3, 1e-1, 1.0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument(
        "--structures", nargs="+", choices=["kronecker", "dense"], default=["kronecker", "dense"]
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header(args)
    tic = time.perf_counter()
    CASES[args.case](args)
    print(
        f"process: wall {time.perf_counter() - tic:.0f}s, CPU {cpu_seconds():.0f}s (user+sys; the cores are "
        f"shared, so CPU/threads is the time on an idle machine), peak RSS {peak_rss_gib():.2f} GiB"
    )


if __name__ == "__main__":
    main()
