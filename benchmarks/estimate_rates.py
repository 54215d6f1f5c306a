"""Measure the rates behind the time range of ``POST /v1/jobs:estimate`` (contracts/estimate.py).

Prints, on this machine with one torch thread (a worker child's default when concurrency
equals cores):

- training: sample-epoch-parameters per second of mini-batch Adam training with
  cross-entropy (``infoscore.scores.training_dynamics`` on digits, per-epoch evaluation
  included), for a small and a wide MLP, and the fixed seconds per optimizer step;
- float64 dense algebra: GEMM flop/s and Cholesky flop/s at n = 2000.

    PYTHONPATH=. python benchmarks/estimate_rates.py
"""

from __future__ import annotations

import resource
import time

import torch

from infoscore.data import load_digits
from infoscore.models import build_model
from infoscore.ntk import per_sample_jacobians
from infoscore.scores import training_dynamics


def timed(fn: object) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - wall0, time.process_time() - cpu0


def main() -> None:
    torch.set_num_threads(1)
    ds = load_digits(label_noise=0.2)
    x = torch.as_tensor(ds.x_train, dtype=torch.float32)
    y = torch.as_tensor(ds.y_train)
    n = x.shape[0]
    print(f"digits n_train = {n}, torch {torch.__version__}, threads 1")
    for hidden, epochs in (([64], 20), ([256], 20), ([1024], 6)):
        model = build_model({"arch": "mlp", "hidden": hidden}, ds.input_shape, ds.n_classes, seed=0)
        p = sum(t.numel() for t in model.parameters())
        wall, cpu = timed(
            lambda model=model, epochs=epochs: training_dynamics(
                model, x, y, epochs=epochs, el2n_epoch=1, batch_size=64, seed=0
            )
        )
        steps = epochs * -(-n // 64)
        print(
            f"mlp {hidden}: p = {p}, {epochs} epochs, {steps} steps: wall {wall:.2f} s, cpu {cpu:.2f} s, "
            f"{epochs * n * p / wall:.3e} sample-epoch-params/s, {wall / steps * 1e3:.2f} ms/step"
        )
    model = build_model({"arch": "mlp", "hidden": [256]}, ds.input_shape, ds.n_classes, seed=0)
    p = sum(t.numel() for t in model.parameters())
    rows = 500
    wall, cpu = timed(lambda: per_sample_jacobians(model, x[:rows]))
    k = ds.n_classes
    print(
        f"per-sample Jacobians, mlp [256], n = {rows}, k = {k}, p = {p}: wall {wall:.2f} s, cpu {cpu:.2f} s, "
        f"{rows * k * p / wall:.3e} sample-class-params/s"
    )
    m = 2000
    a = torch.randn(m, m, dtype=torch.float64)
    wall, cpu = timed(lambda: a @ a)
    print(f"float64 GEMM {m}: wall {wall:.3f} s, cpu {cpu:.3f} s, {2 * m**3 / wall:.3e} flop/s")
    spd = a @ a.T + m * torch.eye(m, dtype=torch.float64)
    wall, cpu = timed(lambda: torch.linalg.cholesky(spd))
    print(f"float64 Cholesky {m}: wall {wall:.3f} s, cpu {cpu:.3f} s, {m**3 / 3 / wall:.3e} flop/s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
