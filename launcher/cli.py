"""The ``infoscore`` command: ``up`` (embedded mode), ``api`` and ``worker`` (one role
each, configured by ``INFOSCORE_*`` environment variables), and ``upload``, ``derive``,
``submit``, ``status``, ``wait``, ``result``, ``datasets`` against a running API (``--url`` or
``INFOSCORE_URL``, default http://127.0.0.1:8000)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .client import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="infoscore: sample information as a service.\n\n"
    f"The client commands talk to {DEFAULT_URL} unless --url or the INFOSCORE_URL environment "
    "variable says otherwise (after `make up PORT=8123`: export INFOSCORE_URL=http://127.0.0.1:8123).",
)

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url", envvar="INFOSCORE_URL", show_envvar=True, help="API base URL (or set INFOSCORE_URL)"
    ),
]
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

    from service.app import create_app
    from service.net import is_loopback
    from service.settings import get_service_settings

    settings = get_service_settings()
    if not is_loopback(settings.host) and settings.auth != "required":
        typer.echo(
            f"refusing to bind {settings.host} without API keys: set INFOSCORE_AUTH=required", err=True
        )
        raise typer.Exit(2)
    from service.server import protocol_class

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=protocol_class(),  # h11 with a request-header deadline (INFOSCORE_HEADER_TIMEOUT)
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
    from workers.celery_app import app as celery_app
    from workers.registry import worker_queues
    from workers.settings import get_worker_settings

    settings = get_worker_settings()
    n = concurrency or settings.worker_concurrency
    # The prefork children inherit the app's configuration: they size their torch thread
    # pools from it (workers.celery_app), not from the environment.
    celery_app.conf.worker_concurrency = n
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={n}",
            f"--loglevel={loglevel}",
            "-Q",
            # infoscore.jobs, plus infoscore.jobs.cuda on a worker that can run CUDA jobs
            ",".join(worker_queues(settings)),
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"infoscore-{os.getpid()}@%h",
        ]
    )


@app.command()
@_api_errors
def upload(
    path: Path,
    label_column: Annotated[str | None, typer.Option(help="column of the labels (default 'label')")] = None,
    id_column: Annotated[str | None, typer.Option(help="column of the ids (default 'id' if present)")] = None,
    feature_columns: Annotated[
        str | None, typer.Option(help="comma-separated: exactly these feature columns")
    ] = None,
    exclude_columns: Annotated[str | None, typer.Option(help="comma-separated: columns to drop")] = None,
    truth_column: Annotated[
        str | None, typer.Option(help="true labels of the training rows (for evaluation)")
    ] = None,
    standardize: Annotated[
        bool, typer.Option("--standardize", help="z-score features with the training statistics")
    ] = False,
    remap_labels: Annotated[
        bool, typer.Option("--remap-labels", help="map the distinct labels, sorted, to 0..k-1")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Upload a dataset (npz, CSV or Parquet); prints its record with the id."""
    record = _client(url, api_key).upload_dataset(
        path,
        label_column=label_column,
        id_column=id_column,
        feature_columns=feature_columns.split(",") if feature_columns else None,
        exclude_columns=exclude_columns.split(",") if exclude_columns else None,
        truth_column=truth_column,
        standardize=standardize,
        remap_labels=remap_labels,
    )
    _print_json(record)
    for warning in record.get("warnings") or []:
        typer.echo(f"warning: {warning}", err=True)


@app.command()
@_api_errors
def datasets(
    limit: Annotated[int, typer.Option(help="rows")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print the records as JSON")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """List your datasets, newest first."""
    items = _client(url, api_key).datasets(limit=limit)
    if as_json:
        _print_json(items)
        return
    rows = [
        {
            "id": d["id"],
            "filename": d.get("filename") or "",
            "n_train": d["n_train"],
            "n_test": d["n_test"],
            "classes": d["n_classes"],
            "input_shape": "x".join(map(str, d["input_shape"])),
            "created": str(d["created_at"])[:19],
            "warnings": len(d.get("warnings") or []),
        }
        for d in items
    ]
    typer.echo(format_table(rows, max_width=40) if rows else "no datasets yet: infoscore upload FILE")


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, max_width: int = 24) -> str:
    """Rows as an aligned text table; floats with 4 significant digits."""
    columns = columns or list(rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, float):
            text = f"{value:.4g}"
        elif value is None:
            text = ""
        else:
            text = str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A live one-line progress bar on stderr: state, done/total, elapsed and ETA.

    On a terminal the line is redrawn in place; otherwise (logs, CI) a line is printed only
    when the state changes or another tenth of the work is done.
    """

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.first_done: tuple[float, int] | None = None
        self.last_key: tuple[str, int] | None = None

    def line(self, job: dict[str, Any]) -> str:
        state = job["state"]
        done, total = int(job["progress"]["done"]), int(job["progress"]["total"])
        now = time.monotonic()
        elapsed = now - self.started
        if total > 0:
            frac = min(1.0, done / total)
            filled = round(frac * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            count = f"{done}/{total} ({frac:.0%})"
        else:
            bar, count = "." * self.width, "-"
        eta = "?"
        if state in TERMINAL:
            eta = "0:00"
        elif total > 0 and done > 0:
            if self.first_done is None:
                self.first_done = (now, done)
            t0, d0 = self.first_done
            rate = (done - d0) / (now - t0) if done > d0 and now > t0 else done / max(elapsed, 1e-9)
            eta = _duration((total - done) / rate) if rate > 0 else "?"
        return f"{job['id']} [{bar}] {count} {state}  elapsed {_duration(elapsed)}  ETA {eta}"

    def __call__(self, job: dict[str, Any]) -> None:
        text = self.line(job)
        final = job["state"] in TERMINAL
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.stream.flush()
            return
        total = int(job["progress"]["total"]) or 1
        key = (job["state"], int(10 * int(job["progress"]["done"]) / total))
        if key != self.last_key or final:
            self.last_key = key
            self.stream.write(text + "\n")
            self.stream.flush()


@app.command()
@_api_errors
def derive(
    job_id: str,
    apply: Annotated[
        str, typer.Option(help="drop | relabel | drop-and-relabel (see docs/jobs/label-issues.md)")
    ] = "drop-and-relabel",
    url: UrlOpt = DEFAULT_URL,
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
    wait: Annotated[
        bool, typer.Option("--wait", help="block until the job ends, with a progress bar on stderr")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    url: UrlOpt = DEFAULT_URL,
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
        job = client.wait(job["id"], on_progress=None if quiet else ProgressBar())
    _print_json(job)
    if wait and job["state"] != "succeeded":
        raise typer.Exit(1)


@app.command()
@_api_errors
def status(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Print a job's record."""
    _print_json(_client(url, api_key).get(job_id))


@app.command("wait")
@_api_errors
def wait_cmd(
    job_id: str,
    timeout: Annotated[float, typer.Option(help="seconds")] = 3600.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Wait for a job to end, showing a progress bar (state, done/total, ETA) on stderr;
    prints the final record; exit code 0 only if it succeeded."""
    job = _client(url, api_key).wait(job_id, timeout=timeout, on_progress=None if quiet else ProgressBar())
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
    as_json: Annotated[
        bool, typer.Option("--json", help="print the whole result page (summary and rows) as JSON")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Print a job's headline numbers and a table of its top rows (--json: the whole page as
    JSON), or download an artifact (--artifact scores.csv)."""
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
    elif as_json:
        _print_json(page)
    else:
        typer.echo(result_text(page, sort=sort, order=order))


def _headlines(summary: dict[str, Any] | None, prefix: str = "", depth: int = 0) -> list[str]:
    """Scalar summary entries (one level into dicts such as auroc_noisy), skipping settings."""
    lines: list[str] = []
    for key, value in (summary or {}).items():
        if key in ("settings", "timings") or key.startswith("_"):
            continue
        if isinstance(value, bool) or value is None or isinstance(value, int | str):
            lines.append(f"{prefix}{key}: {value}")
        elif isinstance(value, float):
            lines.append(f"{prefix}{key}: {value:.4g}")
        elif isinstance(value, dict) and depth == 0:
            inner = _headlines(value, "", 1)
            if inner and len(inner) <= 12:
                lines.append(f"{prefix}{key}: " + ", ".join(inner))
    return lines


def result_text(page: dict[str, Any], *, sort: str | None = None, order: str = "desc") -> str:
    """A result page for a terminal: the summary's headline numbers, then the top rows."""
    out = [f"job {page['job_id']}"]
    heads = _headlines(page.get("summary"))
    if heads:
        out += ["", "summary (full: --json):"] + [f"  {h}" for h in heads[:30]]
        if len(heads) > 30:
            out.append(f"  ... {len(heads) - 30} more (--json)")
    rows = page.get("rows") or []
    if rows:
        shown = f"sorted by {sort} {order}" if sort else "in stored order (--sort COLUMN to rank)"
        out += [
            "",
            f"top {len(rows)} of {page['total_rows']} rows, {shown}:",
            format_table(rows, page["columns"]),
        ]
    elif page.get("total_rows", 0) == 0:
        out += ["", "(this job has no per-sample table)"]
    return "\n".join(out)


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
    from store.settings import CommonSettings, get_common_settings

    if data_dir is not None:
        settings = CommonSettings(data_dir=data_dir, database_url=None)
    else:
        settings = get_common_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return JobStore(settings.resolved_database_url())


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="tenant the key acts for")],
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"id", "tenant", "key"} as JSON')] = False,
) -> None:
    """Create a key; prints it once (only its hash is stored)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,119}", tenant):
        typer.echo("error: --tenant must be 1-120 letters, digits, '_', '-' or '.'", err=True)
        raise typer.Exit(2)
    key_id, key = _key_store(data_dir).create_key(tenant)
    if as_json:
        _print_json({"id": key_id, "tenant": tenant, "key": key})
        return
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
    # Uploaded datasets, artifacts and the SQLite file hold users' data: owner-only by
    # default (0600 files, 0700 folders), whichever process creates them.
    os.umask(0o077)
    app()


if __name__ == "__main__":
    main()
