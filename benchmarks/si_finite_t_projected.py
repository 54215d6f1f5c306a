"""Projected sample information at finite t: the feature-space recurrence vs one eigh per sample.

Usage: python benchmarks/si_finite_t_projected.py [--n 2000] [--d 512] [--t 2000] [--threads 1] [--skip-old]

Gaussians built-in, 10 classes, dim 32, 10% uniform label noise; MLP [128] at init; Φ = J R
with d columns (seeded Rademacher). Both routes run on the same Φ in the same process:
``loo_primal_finite`` (one eigh of ΦᵀΦ) and the finite-t branch of ``loo_primal`` (one eigh
of M − Φ_iᵀΦ_i per sample). Prints wall and CPU seconds of each and the largest relative
difference of the scores.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from infoscore import data, models
from infoscore.linearized import one_hot
from infoscore.projection import projected_features, projector_for
from infoscore.sample_info import loo_primal, loo_primal_finite


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--t", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-old", action="store_true", help="time only the recurrence")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k = 10
    ds = data.make_gaussians(n=args.n, dim=32, classes=k, n_test=10, label_noise=0.1, seed=0)
    model = models.build_model({"arch": "mlp", "hidden": [128]}, (32,), k, seed=0)
    x, y = torch.tensor(ds.x_train), torch.tensor(ds.y_train)
    phi = projected_features(model, x, projector_for(model, args.d, seed=0)).reshape(args.n * k, args.d)
    with torch.no_grad():
        r0 = (model(x).double() - one_hot(y, k)).reshape(-1)
    gram_max = float(torch.linalg.eigvalsh(phi.double().T @ phi.double()).max())
    lam = 1e-3 * float((phi.double() ** 2).sum()) / (args.n * k)
    lr = args.n / (gram_max + lam)  # η·s_max = 1
    kw = {"k": k, "lam": lam, "lam_loo": lam, "eta": lr / args.n, "eta_loo": lr / (args.n - 1), "t": args.t}
    print(f"n = {args.n}, k = {k}, d = {args.d}, t = {args.t}, torch threads = {args.threads}")
    tic, cpu = time.perf_counter(), time.process_time()
    new = loo_primal_finite(phi, r0, **kw)  # type: ignore[arg-type]
    print(
        f"recurrence (one eigh): wall {time.perf_counter() - tic:.1f} s, CPU {time.process_time() - cpu:.1f} s"
    )
    if args.skip_old:
        return
    tic, cpu = time.perf_counter(), time.process_time()
    old = loo_primal(phi, r0, **kw)  # type: ignore[arg-type]
    print(
        f"one eigh per sample:   wall {time.perf_counter() - tic:.1f} s, CPU {time.process_time() - cpu:.1f} s"
    )
    diff = float((new.sq_weight_change - old.sq_weight_change).abs().max() / old.sq_weight_change.abs().max())
    print(f"max relative difference of the scores: {diff:.2e}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
