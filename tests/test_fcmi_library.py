"""f-CMI as a library call: ``infoscore.fcmi_bound`` = plan -> run_unit -> reduce, the same
functions the service's fan-out calls (docs/jobs/fcmi-bound.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import infoscore
from infoscore import fcmi
from infoscore.config_checks import DEFAULT_MODEL
from infoscore.data import make_gaussians
from infoscore.errors import Cancelled, InvalidInputError
from tests.runner_helpers import make_context
from workers.runners.fcmi import FcmiRunner

GAUSSIANS = {"builtin": "gaussians", "n": 200, "dim": 6, "classes": 3, "label_noise": 0.2, "seed": 5}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _request(params: dict[str, Any], model: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    return {
        "kind": "fcmi-bound",
        "dataset": GAUSSIANS,
        "model": model or {"arch": "linear"},
        "params": params,
        "seed": seed,
    }


def _without_seconds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_library_call_fanout_path_and_runner_give_identical_outputs(tmp_path: Path) -> None:
    """The in-process call, the fan-out (units through their JSON params, as the worker
    stores them) and the runner's serial run: the same summary, CSVs and figures."""
    params = {
        "n": [12, 24],
        "k1": 2,
        "k2": 3,
        "epochs": 4,
        "lr": 0.05,
        "batch_size": 8,
        "eval_epochs": [0, 2],
        "mi_estimator": "miller_madow",
        "experimental": True,
    }
    ctx = make_context(_request(params, {"arch": "mlp", "hidden": [8]}, seed=11), tmp_path)
    config = infoscore.FcmiConfig(**ctx.params.model_dump(), seed=11)
    direct = infoscore.fcmi_bound(ctx.dataset, ctx.model_spec, config)

    runner = FcmiRunner()
    units = runner.plan(ctx)
    stored = [type(u)(name=u.name, params=json.loads(json.dumps(u.params))) for u in units]
    fanout = runner.reduce(ctx, {u.name: runner.run_unit(ctx, u) for u in stored})
    serial = runner.run(ctx)

    expected = _without_seconds(direct.summary())
    assert expected["results"][0]["units"] == 2 * 3 and len(expected["by_epoch"]) == 2 * 3
    for out in (fanout, serial):
        assert _without_seconds(out.summary) == expected
        assert out.scores is None and direct.table() is None
        assert out.files == {**direct.data_files(), **direct.figures()}
    assert set(direct.figures()) == {"bound.png", "bound_epochs.png"}
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in direct.figures().values())
    assert ctx.progress_log == [(i, 4) for i in range(1, 5)]  # type: ignore[attr-defined]


def test_fcmi_bound_equals_a_reference_built_from_one_training_at_a_time() -> None:
    """Slow reference: each of the k2 draws trained alone (``train_unit``) with the seeds
    the docs give, estimated with ``estimate_supersample`` and ``aggregate``."""
    ds = make_gaussians(n=120, dim=5, classes=2, label_noise=0.1, seed=2)
    model = {"arch": "mlp", "hidden": [6]}
    config = infoscore.FcmiConfig(n=(10, 20), k1=2, k2=3, epochs=3, lr=0.05, batch_size=4, seed=9)
    result = infoscore.fcmi_bound(ds, model, config)
    for agg, n in zip(result.aggregates, config.n, strict=True):
        estimates = []
        for s in range(config.k1):
            pairs = fcmi.make_supersample(ds.n_train, n, s)
            selectors = [fcmi.draw_selector(n, j) for j in range(config.k2)]
            trained = [
                fcmi.train_unit(
                    ds.x_train,
                    ds.y_train,
                    pairs,
                    sel,
                    n_classes=ds.n_classes,
                    model_spec=model,
                    epochs=3,
                    batch_size=4,
                    lr=0.05,
                    seed=fcmi.unit_seeds(9, s, j, deterministic=False),
                )
                for j, sel in enumerate(selectors)
            ]
            estimates.append(
                fcmi.estimate_supersample(
                    np.stack([t.predictions for t in trained]),
                    np.stack(selectors),
                    np.array([t.train_accuracy for t in trained]),
                    np.array([t.heldout_accuracy for t in trained]),
                    n_classes=ds.n_classes,
                )
            )
        reference = fcmi.aggregate(n, estimates)
        for field in ("gap_mean", "gap_std", "bound_mean", "bound_std", "train_accuracy", "bias_estimate"):
            assert getattr(agg, field) == pytest.approx(getattr(reference, field), abs=1e-12), field
        for got, want in zip(result.estimates[n], estimates, strict=True):
            np.testing.assert_allclose(got.mi, want.mi, atol=1e-12)


def test_units_carry_their_params_and_keep_their_cache_keys(tmp_path: Path) -> None:
    """A unit's params are the library unit plus the dataset reference, in the layout the
    unit cache keys hash (so keys of earlier jobs stay valid); a unit read back from its
    params runs to the same result."""
    ctx = make_context(_request({"n": [10], "k1": 2, "k2": 3, "epochs": 2, "eval_epochs": [1]}), tmp_path)
    units = FcmiRunner().plan(ctx)
    library = fcmi.plan(ctx.dataset, ctx.model_spec, infoscore.FcmiConfig(**ctx.params.model_dump(), seed=0))
    assert [u.name for u in units] == [u.name for u in library] == ["n10-s0", "n10-s1"]
    reference = ctx.request.dataset
    assert not isinstance(reference, str)  # a builtin here
    for unit, lib in zip(units, library, strict=True):
        old_layout = {
            "dataset": reference.model_dump(mode="json"),
            "n": 10,
            "supersample_seed": lib.supersample_seed,
            "selector_seeds": [0, 1, 2],
            "learner": "model",
            "model": ctx.model_spec,
            "epochs": 2,
            "lr": 1e-3,
            "batch_size": 64,
            "optimizer": "adam",
            "init_seeds": [
                fcmi.unit_seeds(0, lib.supersample_seed, j, deterministic=False) for j in range(3)
            ],
            "eval_epochs": [1, 2],
        }
        assert unit.params == old_layout
        assert unit.key("scope") == type(unit)(unit.name, old_layout).key("scope")
        assert fcmi.FcmiUnit.from_params(unit.name, json.loads(json.dumps(unit.params))) == lib
    first = fcmi.run_unit(ctx.dataset, library[1])
    again = FcmiRunner().run_unit(ctx, units[1])
    for name in ("predictions", "epochs", "selectors", "accuracy"):
        np.testing.assert_array_equal(first[name], again[name])
    nn = fcmi.plan(ctx.dataset, None, infoscore.FcmiConfig(n=(10,), k1=1, k2=2, learner="1nn"))
    assert nn[0].params() == {"n": 10, "supersample_seed": 0, "selector_seeds": [0, 1], "learner": "1nn"}
    assert fcmi.FcmiUnit.from_params("n10-s0", nn[0].params()) == nn[0]


def test_progress_counts_units_and_should_stop_cancels() -> None:
    ds = make_gaussians(n=60, dim=4, classes=2, seed=1)
    config = infoscore.FcmiConfig(n=(5, 10), k1=2, k2=2, learner="1nn")
    seen: list[tuple[int, int]] = []
    result = infoscore.fcmi_bound(ds, config=config, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [r["n"] for r in result.results()] == [5, 10] and "model" not in result.settings
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        infoscore.fcmi_bound(ds, config=config, should_stop=lambda: next(calls) >= 2)


def test_default_model_is_the_registry_mlp() -> None:
    ds = make_gaussians(n=40, dim=3, classes=2, seed=0)
    config = infoscore.FcmiConfig(n=(4,), k1=1, k2=2, epochs=1, batch_size=4)
    result = infoscore.fcmi_bound(ds, None, config, device="cpu")
    assert result.settings["model"] == DEFAULT_MODEL
    assert result.summary()["results"][0]["units"] == 2
    assert math.isfinite(result.summary()["bias_estimate"])


def test_bad_inputs_raise_before_any_training() -> None:
    ds = make_gaussians(n=40, dim=3, classes=2, seed=0)
    with pytest.raises(InvalidInputError, match="'n' parameter of fcmi-bound") as err:
        infoscore.fcmi_bound(ds, None, infoscore.FcmiConfig(n=(10, 21), k1=1, k2=2))
    assert err.value.param == "n"
    with pytest.raises(InvalidInputError, match="'model' parameter") as err:
        infoscore.fcmi_bound(ds, {"arch": "resnet"}, infoscore.FcmiConfig(n=(4,), k1=1, k2=2))
    assert err.value.param == "model"
    with pytest.raises(InvalidInputError, match="'config' parameter of fcmi_bound"):
        infoscore.fcmi_bound(ds, None, {"n": [4]})  # type: ignore[arg-type]
    config = infoscore.FcmiConfig(n=(4,), k1=2, k2=2, learner="1nn")
    units = fcmi.plan(ds, None, config)
    with pytest.raises(InvalidInputError, match=r"'results' parameter of fcmi\.reduce"):
        fcmi.reduce(ds, None, config, {units[0].name: fcmi.run_unit(ds, units[0])})


def test_a_unit_without_its_stored_params_fails_clearly_without_replanning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contracts.jobs import parse_job_request
    from workers.execution import Executor
    from workers.settings import WorkerSettings

    sent: list[list[str]] = []
    settings = WorkerSettings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    executor = Executor(settings, lambda name, args, queue: sent.append(args))
    request = parse_job_request(_request({"n": [10], "k1": 1, "k2": 2, "learner": "1nn"})).model_dump(
        mode="json"
    )
    job = executor.store.create_job(kind="fcmi-bound", request=request, fingerprint="fp-lost-params")
    assert executor.run_job(job["id"]) == "fanned-out"
    (stored,) = (tmp_path / "cache" / "units").glob("*.json")
    stored.unlink()

    def no_plan(self: FcmiRunner, ctx: Any) -> list[Any]:
        raise AssertionError("run_unit planned the whole job again")

    monkeypatch.setattr(FcmiRunner, "plan", no_plan)
    assert executor.run_unit(*sent[0]) == "failed"
    failed = executor.store.get_job(job["id"])
    assert failed is not None and failed["state"] == "failed"
    assert (
        "stored parameters" in failed["error"]["detail"]
        and "submit the job again" in failed["error"]["detail"]
    )
