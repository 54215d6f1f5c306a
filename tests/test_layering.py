"""The import layering: the gateway (``service/``) never imports the workers, the
launcher, the science library or torch; the launcher's client and command import neither
the gateway nor the workers until a command needs them; settings sit beside their users,
one cached getter each; worker concurrency reaches the prefork children through the
Celery app's configuration, not the environment."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
# Top-level packages the gateway must never import, and why.
FORBIDDEN_IN_SERVICE = {
    "workers": "the gateway sends tasks by name; worker code stays in the worker image",
    "launcher": "the launcher starts the gateway; it sits above it",
    "infoscore": "the gateway never computes",
    "torch": "the gateway image has no torch",
}


def imported_modules(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """Every absolute module a source file imports, anywhere in it (module level, inside
    functions, ``importlib.import_module("...")`` and ``__import__("...")`` with a literal
    name), as (line, dotted name). Relative imports stay inside their package: skipped."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.append((node.lineno, first.value))
    return found


def forbidden_imports(package: Path, forbidden: dict[str, str]) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        for line, module in imported_modules(path.read_text(), str(path)):
            top = module.split(".")[0]
            if top in forbidden:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({forbidden[top]})")
    return problems


def test_the_scanner_finds_every_form_of_import() -> None:
    source = (
        "import os\n"
        "import workers.celery_app as w\n"
        "from store.db import JobStore\n"
        "from . import metrics\n"
        "def f():\n"
        "    from workers.settings import get_worker_settings\n"
        "    import importlib\n"
        "    importlib.import_module('torch')\n"
        "    return __import__('launcher.cli')\n"
    )
    assert imported_modules(source) == [
        (1, "os"),
        (2, "workers.celery_app"),
        (3, "store.db"),
        (6, "workers.settings"),
        (7, "importlib"),
        (8, "torch"),
        (9, "launcher.cli"),
    ]


def test_service_never_imports_workers_launcher_or_torch() -> None:
    assert (ROOT / "service" / "app.py").is_file()
    assert forbidden_imports(ROOT / "service", FORBIDDEN_IN_SERVICE) == []


def test_the_launcher_left_service() -> None:
    for name in ("cli.py", "client.py", "supervisor.py"):
        assert not (ROOT / "service" / name).exists(), f"service/{name} belongs in launcher/"
        assert (ROOT / "launcher" / name).is_file()


def test_client_and_cli_import_neither_gateway_nor_workers() -> None:
    # The client is httpx only; the command loads the gateway or the workers only inside
    # the command that runs them (`infoscore api`, `infoscore worker`).
    code = (
        "import sys, launcher.client, launcher.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'service', 'workers', 'infoscore', 'torch', 'celery', 'fastapi', 'sqlalchemy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_settings_beside_their_users_one_cached_getter_each() -> None:
    from service.settings import ServiceSettings, get_service_settings
    from store.settings import CommonSettings, get_common_settings
    from workers.settings import WorkerSettings, get_worker_settings

    for getter, cls in (
        (get_common_settings, CommonSettings),
        (get_service_settings, ServiceSettings),
        (get_worker_settings, WorkerSettings),
    ):
        assert isinstance(getter(), cls) and getter() is getter()
        assert issubclass(cls, CommonSettings)
    # Each role's fields live in its own class only.
    assert "max_upload_bytes" in ServiceSettings.model_fields
    assert "max_upload_bytes" not in WorkerSettings.model_fields
    assert "worker_concurrency" in WorkerSettings.model_fields
    assert "worker_concurrency" not in ServiceSettings.model_fields
    assert "worker_concurrency" not in CommonSettings.model_fields


def test_make_celery_carries_the_worker_concurrency() -> None:
    from workers.celery_app import make_celery
    from workers.settings import WorkerSettings

    assert make_celery(WorkerSettings(worker_concurrency=3)).conf.worker_concurrency == 3


def test_worker_command_passes_concurrency_to_celery_not_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from launcher import cli
    from workers import settings
    from workers.celery_app import app as celery_app

    worker_settings = settings.WorkerSettings(data_dir=tmp_path / "data", worker_concurrency=1)
    monkeypatch.setattr(settings, "get_worker_settings", lambda: worker_settings)
    monkeypatch.setitem(celery_app.conf, "worker_concurrency", celery_app.conf.worker_concurrency)
    monkeypatch.delenv("INFOSCORE_WORKER_CONCURRENCY", raising=False)
    seen: list[list[str]] = []
    monkeypatch.setattr(celery_app, "worker_main", lambda argv: seen.append(argv))
    result = CliRunner().invoke(cli.app, ["worker", "--concurrency", "3"])
    assert result.exit_code == 0, result.output
    assert "--concurrency=3" in seen[0]
    assert celery_app.conf.worker_concurrency == 3
    assert "INFOSCORE_WORKER_CONCURRENCY" not in os.environ
    assert (tmp_path / "data").is_dir()


def test_prefork_child_sizes_torch_threads_from_the_app_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from workers import celery_app as module
    from workers.settings import WorkerSettings

    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(module.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(module, "get_worker_settings", lambda: WorkerSettings(worker_concurrency=1))
    monkeypatch.setitem(module.app.conf, "worker_concurrency", 4)
    module._init_child()
    assert threads == [2]  # 8 cores / 4 children, not 8 / the settings' 1
    monkeypatch.setattr(
        module, "get_worker_settings", lambda: WorkerSettings(worker_concurrency=1, torch_threads=3)
    )
    module._init_child()
    assert threads == [2, 3]  # an explicit INFOSCORE_TORCH_THREADS wins
