"""Benchmarks of the structured NTK (issue: NTK without per-sample Jacobians).

    .venv/bin/python benchmarks/ntk.py kernel --threads 2          # structured vs J Jᵀ, digits MLP [512]
    .venv/bin/python benchmarks/ntk.py exact-si --threads 2        # exact SI vs one float64 Cholesky
    .venv/bin/python benchmarks/ntk.py exact-si --service          # the same job through `infoscore up`

``kernel``: the full NTK of the digits request (MLP [512], k = 10) by per-layer factors at
n = 1347, and both methods on the first ``--ref-n`` samples (the J Jᵀ reference costs
2(nk)²p flops: at n = 1347 it is minutes, so the ratio is measured on the subset, where
both costs scale as (nk)², and the numbers are compared there).
``exact-si``: ``sample_information`` (library call, defaults, t = ∞) on the digits request
with 20% noise and, in the same process, ``torch.linalg.cholesky`` of an SPD float64
matrix of the same side nk, once before and once after it: the ratio (against the mean of
the two, and against each) is what the issue's target is about.
Prints wall and CPU seconds and peak RSS; the machine is shared, so compare ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from infoscore import data, models
from infoscore.ntk import ntk_gram
from infoscore.sample_info import sample_information

START = time.perf_counter()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def digits_model(hidden: list[int], noise: float = 0.0) -> tuple[torch.nn.Module, data.Dataset]:
    ds = data.load_digits(label_noise=noise, seed=0)
    return models.build_model({"arch": "mlp", "hidden": hidden}, (1, 8, 8), 10, seed=0), ds


def case_kernel(args: argparse.Namespace) -> None:
    model, ds = digits_model(args.hidden)
    x = torch.tensor(ds.x_train)
    p = sum(q.numel() for q in model.parameters())
    print("| method | n | nk | p | wall s | CPU s |")
    print("|---|---|---|---|---|---|")
    full, w, c = timed(ntk_gram, model, x, method="structured")
    print(f"| structured | {x.shape[0]} | {full.shape[0]} | {p} | {w:.1f} | {c:.1f} |", flush=True)
    sub = x[: args.ref_n]
    s, ws, cs = timed(ntk_gram, model, sub, method="structured")
    print(f"| structured | {sub.shape[0]} | {s.shape[0]} | {p} | {ws:.2f} | {cs:.2f} |", flush=True)
    j, wj, cj = timed(ntk_gram, model, sub, method="jacobian")
    print(f"| J Jᵀ (reference) | {sub.shape[0]} | {j.shape[0]} | {p} | {wj:.2f} | {cj:.2f} |", flush=True)
    rel = float((s - j).abs().max() / j.abs().max())
    print(
        f"speedup at n = {sub.shape[0]}: wall {wj / ws:.1f}x, CPU {cj / cs:.1f}x; max |Δ|/max|Θ| = {rel:.2e}"
    )
    print(
        f"structured Θ at n = {sub.shape[0]} equals the rows of the n = {x.shape[0]} one: "
        f"{float((full[: s.shape[0], : s.shape[0]] - s).abs().max()):.1e}"
    )
    print(
        f"# process: wall {time.perf_counter() - START:.0f} s, CPU {cpu_seconds():.0f} s, peak RSS {peak_rss_gib():.2f} GiB"
    )


def cholesky_seconds(n_total: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``torch.linalg.cholesky`` of an SPD float64 n_total² matrix."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(n_total, 64, generator=gen, dtype=torch.float64)
    a = g @ g.T
    a.diagonal().add_(1.0)
    del g
    _, wall, cpu = timed(torch.linalg.cholesky, a)
    return wall, cpu


def service_exact_si(hidden: list[int]) -> tuple[float, dict[str, Any]]:
    """Submit the digits exact-SI job to a fresh ``infoscore up`` (one worker: its torch uses
    all cores) and wait; returns the seconds from submit to the final state and the record."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from embedded import submit_and_wait

    request = {
        "kind": "sample-information",
        "dataset": {"builtin": "digits", "label_noise": 0.2},
        "model": {"arch": "mlp", "hidden": hidden},
        "params": {"method": "exact"},
    }
    return submit_and_wait(1, request, prefix="infoscore-exact-si-", poll=0.25)


def case_exact_si(args: argparse.Namespace) -> None:
    model, ds = digits_model(args.hidden, noise=0.2)
    n_total = len(ds.y_train) * 10
    # One Cholesky before and one after the SI run: the load of a shared machine drifts, so the
    # ratio is given against each and against their mean.
    w_ch0, c_ch0 = cholesky_seconds(n_total)
    print(
        f"float64 Cholesky of {n_total} x {n_total} (before): wall {w_ch0:.1f} s, CPU {c_ch0:.1f} s",
        flush=True,
    )
    if args.service:
        w_si, record = service_exact_si(args.hidden)
        c_si = None  # the worker's CPU time is not this process's
        summary = record.get("summary") or {}
        label = "exact SI through the service"
        print(
            f"{label} ({record['state']}): submit to {record['state']} {w_si:.1f} s; "
            f"job seconds {summary.get('seconds')}, timings {summary.get('timings')}",
            flush=True,
        )
    else:
        res, w_si, c_si = timed(
            sample_information,
            model,
            torch.tensor(ds.x_train),
            torch.tensor(ds.y_train),
            k=10,
            x_eval=torch.tensor(ds.x_test),
            y_eval=torch.tensor(ds.y_test),
        )
        assert res.info["n"] * res.info["k"] == n_total
        label = "exact SI"
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in res.info["timings"].items())
        print(
            f"exact SI: n = {res.info['n']}, nk = {n_total}, p = {res.info['p']}, m = {res.info['m']}: "
            f"wall {w_si:.1f} s, CPU {c_si:.1f} s ({timings}); peak RSS so far {peak_rss_gib():.2f} GiB",
            flush=True,
        )
    w_ch1, c_ch1 = cholesky_seconds(n_total)
    print(f"float64 Cholesky of {n_total} x {n_total} (after): wall {w_ch1:.1f} s, CPU {c_ch1:.1f} s")
    w_ch, c_ch = (w_ch0 + w_ch1) / 2, (c_ch0 + c_ch1) / 2
    if c_si is None:
        print(
            f"ratio {label} / Cholesky wall: {w_si / w_ch:.1f}x (mean of the two), "
            f"against before {w_si / w_ch0:.1f}x, after {w_si / w_ch1:.1f}x"
        )
    else:
        print(
            f"ratio {label} / Cholesky (mean of the two): wall {w_si / w_ch:.1f}x, CPU {c_si / c_ch:.1f}x; "
            f"against before {w_si / w_ch0:.1f}x / {c_si / c_ch0:.1f}x, after {w_si / w_ch1:.1f}x / {c_si / c_ch1:.1f}x"
        )
        print(
            f"# process: wall {time.perf_counter() - START:.0f} s, CPU {cpu_seconds():.0f} s, peak RSS {peak_rss_gib():.2f} GiB"
        )
    print("# load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("case", choices=["kernel", "exact-si"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[512])
    parser.add_argument("--ref-n", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--service", action="store_true", help="exact-si: the job through a fresh `infoscore up` (1 worker)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {args.case}: torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("# load average (1, 5, 15 min) at the start: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    {"kernel": case_kernel, "exact-si": case_exact_si}[args.case](args)


if __name__ == "__main__":
    main()
