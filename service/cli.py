"""The ``infoscore`` command: ``up`` (embedded mode), ``api`` and ``worker`` (one role
each, configured by ``INFOSCORE_*`` environment variables), and ``upload``, ``derive``, ``submit``,
``status``, ``wait``, ``result`` against a running API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="infoscore: sample information as a service."
)

UrlOpt = Annotated[str, typer.Option("--url", envvar="INFOSCORE_URL", help="API base URL")]
KeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="INFOSCORE_API_KEY", help="Bearer key")]


def _client(url: str, api_key: str | None) -> Any:
    from .client import InfoscoreClient

    return InfoscoreClient(url, api_key=api_key)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _api_errors(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import httpx

        from .client import InfoscoreAPIError

        try:
            return fn(*args, **kwargs)
        except InfoscoreAPIError as exc:
            typer.echo(f"error {exc.status}: {exc.problem.get('detail', exc.problem)}", err=True)
            raise typer.Exit(1) from exc
        except httpx.HTTPError as exc:
            typer.echo(f"error: cannot reach the API ({exc})", err=True)
            raise typer.Exit(1) from exc

    return wrapper


@app.command()
def up(
    host: Annotated[str, typer.Option(help="API bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="datasets, artifacts, SQLite, broker AOF")
    ] = Path("infoscore-data"),
    workers: Annotated[int, typer.Option(min=1, help="worker processes (Celery prefork concurrency)")] = 1,
    log_dir: Annotated[
        Path | None, typer.Option(help="write worker/api logs here instead of the console")
    ] = None,
) -> None:
    """Run the embedded service: bundled broker + one worker + the API. Ctrl-C stops all."""
    from .supervisor import Supervisor

    auth = os.environ.get("INFOSCORE_AUTH", "off")
    code = Supervisor(
        host=host, port=port, data_dir=data_dir, workers=workers, auth=auth, log_dir=log_dir
    ).run()
    raise typer.Exit(code)


@app.command()
def api() -> None:
    """Run the API alone (INFOSCORE_HOST, INFOSCORE_PORT, INFOSCORE_BROKER_URL, ...)."""
    import uvicorn

    from store.settings import ServiceSettings

    from .app import create_app

    settings = ServiceSettings()
    from .supervisor import is_loopback

    if not is_loopback(settings.host) and settings.auth != "required":
        typer.echo(
            f"refusing to bind {settings.host} without API keys: set INFOSCORE_AUTH=required", err=True
        )
        raise typer.Exit(2)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=os.environ.get("INFOSCORE_LOG_LEVEL", "warning").lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
    )


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="processes (default INFOSCORE_WORKER_CONCURRENCY)")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
) -> None:
    """Run one Celery worker (prefork) against INFOSCORE_BROKER_URL / INFOSCORE_DATABASE_URL."""
    from store.settings import WorkerSettings

    settings = WorkerSettings()
    n = concurrency or settings.worker_concurrency
    os.environ["INFOSCORE_WORKER_CONCURRENCY"] = str(n)
    from contracts.tasks import QUEUE_JOBS
    from workers.celery_app import app as celery_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={n}",
            f"--loglevel={loglevel}",
            "-Q",
            QUEUE_JOBS,
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"infoscore-{os.getpid()}@%h",
        ]
    )


@app.command()
@_api_errors
def upload(path: Path, url: UrlOpt = "http://127.0.0.1:8000", api_key: KeyOpt = None) -> None:
    """Upload a dataset (npz, CSV or Parquet); prints its record with the id."""
    _print_json(_client(url, api_key).upload_dataset(path))


@app.command()
@_api_errors
def derive(
    job_id: str,
    apply: Annotated[
        str, typer.Option(help="drop | relabel | drop-and-relabel (see docs/jobs/label-issues.md)")
    ] = "drop-and-relabel",
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Derive a cleaned dataset from a succeeded label-issues job; prints its record."""
    _print_json(_client(url, api_key).derive(job_id, apply))


@app.command()
@_api_errors
def submit(
    request: Annotated[
        str, typer.Argument(help="job request as a JSON file path, '-' for stdin, or inline JSON")
    ],
    wait: Annotated[bool, typer.Option("--wait", help="block until the job ends")] = False,
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Submit a job; prints the job record (and waits with --wait)."""
    if request == "-":
        text = sys.stdin.read()
    elif request.lstrip().startswith("{"):
        text = request
    else:
        text = Path(request).read_text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        typer.echo(f"error: the request is not valid JSON ({exc})", err=True)
        raise typer.Exit(2) from exc
    client = _client(url, api_key)
    job = client.submit(body)
    if wait:
        job = client.wait(job["id"])
    _print_json(job)
    if wait and job["state"] != "succeeded":
        raise typer.Exit(1)


@app.command()
@_api_errors
def status(job_id: str, url: UrlOpt = "http://127.0.0.1:8000", api_key: KeyOpt = None) -> None:
    """Print a job's record."""
    _print_json(_client(url, api_key).get(job_id))


@app.command("wait")
@_api_errors
def wait_cmd(
    job_id: str,
    timeout: Annotated[float, typer.Option(help="seconds")] = 3600.0,
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Wait for a job to end; exit code 0 only if it succeeded."""
    job = _client(url, api_key).wait(job_id, timeout=timeout)
    _print_json(job)
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@app.command()
@_api_errors
def result(
    job_id: str,
    sort: Annotated[str | None, typer.Option(help="column to sort by")] = None,
    order: Annotated[str, typer.Option(help="asc or desc")] = "desc",
    limit: Annotated[int, typer.Option(help="rows")] = 20,
    artifact: Annotated[str | None, typer.Option(help="download this artifact instead")] = None,
    out: Annotated[Path | None, typer.Option(help="write to this file")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    api_key: KeyOpt = None,
) -> None:
    """Print a job's summary and top rows, or download an artifact (--artifact scores.csv)."""
    client = _client(url, api_key)
    if artifact:
        data = client.artifact(job_id, artifact)
        if out:
            out.write_bytes(data)
            typer.echo(f"wrote {len(data)} bytes to {out}")
        else:
            sys.stdout.buffer.write(data)
        return
    page = client.result(job_id, sort=sort, order=order, limit=limit)
    if out:
        out.write_text(json.dumps(page, indent=2))
        typer.echo(f"wrote {out}")
    else:
        _print_json(page)


keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (INFOSCORE_AUTH=required).")
app.add_typer(keys_app, name="keys")

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="use this data dir's SQLite store (default: INFOSCORE_DATABASE_URL / INFOSCORE_DATA_DIR)",
    ),
]


def _key_store(data_dir: Path | None) -> Any:
    from store.db import JobStore
    from store.settings import CommonSettings

    if data_dir is not None:
        settings = CommonSettings(data_dir=data_dir, database_url=None)
    else:
        settings = CommonSettings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return JobStore(settings.resolved_database_url())


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="tenant the key acts for")],
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key; prints it once (only its hash is stored)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,119}", tenant):
        typer.echo("error: --tenant must be 1-120 letters, digits, '_', '-' or '.'", err=True)
        raise typer.Exit(2)
    key_id, key = _key_store(data_dir).create_key(tenant)
    typer.echo(f"key id: {key_id}\ntenant: {tenant}\nkey:    {key}\n(store it now: it is not shown again)")


@keys_app.command("list")
def keys_list(data_dir: DataDirOpt = None) -> None:
    """List keys (ids, tenants, dates; never the keys)."""
    for k in _key_store(data_dir).list_keys():
        state = f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}" if k["revoked_at"] else "active"
        typer.echo(f"{k['id']}  tenant={k['tenant']}  created={k['created_at']:%Y-%m-%d %H:%M}  {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDirOpt = None) -> None:
    """Revoke a key by id (effective within a few seconds on running APIs)."""
    if not _key_store(data_dir).revoke_key(key_id):
        typer.echo(f"error: no active key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
