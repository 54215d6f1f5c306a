"""Finite-t sample information at the official protocol's size: n = 1000, k = 2, t = 2000.

Usage: python benchmarks/si_finite_t.py [--n 1000] [--t 2000] [--threads 1] [--old-samples 3]

Data: the gaussians built-in, 2 classes, dim 20, 10% uniform label noise (MNIST 4 vs 9 is
not available offline; digits 4 vs 9 has only 271 training rows). Model: MLP [256] at init.
Steps: (1) t = infinity (one Cholesky), whose largest eigenvalue of A sets lr so that
eta * s_max = 1 (GD at t = 2000 then moves far from init); (2) the finite-t job through
the library with the default route (``recurrence``: one eigh for all samples); (3) the
old route, one eigh of A_-i,-i per sample, timed on ``--old-samples`` samples and
extrapolated to n (printed as an extrapolation). Prints wall and CPU seconds, peak RSS,
AUROC of flagging the flipped labels, and the contract estimate's seconds for the job.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from contracts.estimate import Shape, estimate
from infoscore import data, models
from infoscore.ntk import per_sample_jacobians
from infoscore.sample_info import sample_information


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(scores)) + 1
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--t", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--old-samples", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = data.make_gaussians(n=args.n, dim=20, classes=2, n_test=1000, label_noise=0.1, seed=0)
    model = models.build_model({"arch": "mlp", "hidden": [256]}, (20,), 2, seed=0)
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    xe, ye = torch.tensor(ds.x_test), torch.tensor(ds.y_test)
    assert ds.noisy_mask is not None
    print(
        f"n = {args.n}, k = 2, t = {args.t}, m = 1000, MLP [256] (p = 5890), torch threads = {args.threads}"
    )

    tic, cpu = time.perf_counter(), time.process_time()
    inf = sample_information(model, x, y, k=2, x_eval=xe, y_eval=ye)
    assert inf.si_weights is not None
    print(
        f"t = inf: wall {time.perf_counter() - tic:.1f} s, CPU {time.process_time() - cpu:.1f} s, "
        f"AUROC {auroc(inf.si_weights, ds.noisy_mask):.3f}, test acc {inf.test_accuracy:.3f}"
    )
    lr = args.n / inf.info["eig_max"]  # eta * s_max = 1

    tic, cpu = time.perf_counter(), time.process_time()
    fin = sample_information(model, x, y, k=2, x_eval=xe, y_eval=ye, t=args.t, lr=lr, l2=inf.info["l2"])
    wall, cpu_s = time.perf_counter() - tic, time.process_time() - cpu
    assert fin.si_weights is not None and fin.si_predictions is not None
    timings = {k: round(v, 1) for k, v in fin.info["timings"].items()}
    print(
        f"t = {args.t} ({fin.info['finite_t_route']}): wall {wall:.1f} s, CPU {cpu_s:.1f} s, "
        f"peak RSS {peak_rss_gib():.2f} GiB, stages {timings}"
    )
    print(
        f"  AUROC weights {auroc(fin.si_weights, ds.noisy_mask):.3f}, predictions "
        f"{auroc(fin.si_predictions, ds.noisy_mask):.3f}, test acc {fin.test_accuracy:.3f}"
    )
    request = {
        "kind": "sample-information",
        "model": {"arch": "mlp", "hidden": [256]},
        "params": {"t": args.t},
        "device": "auto",
    }
    est = estimate(request, Shape(args.n, 1000, 20, 2, [20]))
    print(f"  contract estimate of the finite-t LOO: {est.compute_seconds['finite_t_loo']:.1f} s")

    if args.old_samples > 0:
        # The old route: one eigh of A_-i,-i per sample (timed on a few, extrapolated).
        jac = per_sample_jacobians(model, x).double().reshape(2 * args.n, -1)
        theta = jac @ jac.T
        del jac
        lam, n = fin.info["lam"], args.n
        tic, cpu = time.perf_counter(), time.process_time()
        for i in range(args.old_samples):
            keep = torch.cat([torch.arange(0, 2 * i), torch.arange(2 * i + 2, 2 * n)])
            torch.linalg.eigh(theta[keep][:, keep] + lam * torch.eye(2 * n - 2, dtype=torch.float64))
        per = (time.perf_counter() - tic) / args.old_samples
        per_cpu = (time.process_time() - cpu) / args.old_samples
        print(
            f"old route (one eigh per sample): {per:.2f} s wall, {per_cpu:.2f} s CPU per sample, "
            f"extrapolated to n = {n}: {per * n:.0f} s wall, {per_cpu * n:.0f} s CPU"
        )


if __name__ == "__main__":
    main()
