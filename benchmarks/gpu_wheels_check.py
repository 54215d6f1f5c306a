"""Are the service's Python packages all there on the GPU check machine?

Walks the requirements (Requires-Dist, with their markers and extras) of what the GPU check
needs: pyproject's dependencies, the ``worker`` extra, and pytest, pytest-timeout, hypothesis.
Prints each requirement nothing covers and exits 1 if there is one.

``--wheels .whl`` (here, by ``benchmarks/gpu_wheels.sh``): a requirement is covered by a wheel
in the folder whose version fits, or by a name in the device's package list below (versions
unknown there: those requirements with a version bound are listed, for information). Markers
are read as on the device (CPython 3.12, Linux x86-64). Also reports two wheels of one name.

``--installed`` (on the device, by ``benchmarks/gpu_check.sh``, after the wheels are installed
and on PYTHONPATH): a requirement is covered by the installed distribution if its version fits.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TEST_NEEDS = ["pytest", "pytest-timeout", "hypothesis"]
# The nvidia-h200 image's packages (/work/.library/device/KINDS.md, read there on 2026-11-17).
DEVICE_LIST = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""
DEVICE = frozenset(DEVICE_LIST.split())
DEVICE_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def roots() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = project["dependencies"] + project["optional-dependencies"]["worker"] + TEST_NEEDS
    return [Requirement(n) for n in names]


def wheel_metadata(path: Path) -> tuple[str, Version, list[str]]:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = Parser().parsestr(zf.read(name).decode())
    return canonicalize_name(meta["Name"]), Version(meta["Version"]), meta.get_all("Requires-Dist") or []


def active(req: Requirement, extras: set[str], env: dict[str, str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--wheels", type=Path, help="folder of wheels (check here, against DEVICE)")
    mode.add_argument("--installed", action="store_true", help="check this interpreter's packages")
    args = ap.parse_args()

    env = dict(DEVICE_ENV) if args.wheels else {k: str(v) for k, v in default_environment().items()}
    # name -> (version, requirements) of what provides it: a wheel, or an installed distribution.
    found: dict[str, tuple[Version | None, list[str]]] = {}
    problems: list[str] = []
    if args.wheels:
        for path in sorted(args.wheels.glob("*.whl")):
            name, wheel_version, requires = wheel_metadata(path)
            if name in found:
                problems.append(f"two wheels of {name}: {found[name][0]} and {wheel_version}")
            found[name] = (wheel_version, requires)

    def lookup(name: str) -> tuple[Version | None, list[str]] | None:
        if args.wheels:
            if name in found:
                return found[name]
            return (None, []) if name in DEVICE else None
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            return None
        return Version(dist.version), dist.requires or []

    unverified: set[str] = set()
    used: set[str] = set()
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, "project") for req in roots()]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        got = lookup(name)
        if got is None:
            problems.append(f"missing: {req} (needed by {parent})")
            continue
        version, requires = got
        used.add(name)
        if version is None:
            if req.specifier:
                unverified.add(
                    f"{req.name}{req.specifier} (by {parent}; on the device, version unknown here)"
                )
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"version: {parent} needs {req}, found {name} {version}")
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        for line in requires:
            sub = Requirement(line)
            if active(sub, set(req.extras), env):
                todo.append((sub, f"{name} {version}"))

    for line in sorted(unverified):
        print(f"  note: {line}")
    for name in sorted(set(found) - used):
        print(f"  unused wheel: {name}")
    for line in dict.fromkeys(problems):
        print(f"PROBLEM {line}")
    where = f"wheels in {args.wheels} + the device's list" if args.wheels else sys.executable
    print(f"requirements check ({where}): {len(used)} packages, {len(set(problems))} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
