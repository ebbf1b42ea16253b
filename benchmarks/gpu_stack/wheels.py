"""The wheels a GPU machine needs to run the orchestration stack, computed and downloaded here.

Why (issue 15): the GPU machines have no package registry, so whatever their image lacks must be
carried there as wheels (``benchmarks/llm_gpu/setup.sh`` installs them with ``--no-index``). The
worker on a GPU machine needs only the stack's clients: ``prefect`` (with its server), ``dvc``,
``mlflow-skinny`` (not ``mlflow``: no UI, no server, no pandas/sklearn extras) and ``fastapi``.

What: the dependency closure of those four at the versions installed in this interpreter's
environment (``importlib.metadata``; markers evaluated for CPython 3.12 on x86-64 Linux, extras
followed where a parent asks for them), minus the packages the GPU image already has (``HAVE``,
or ``--have FILE``), pinned as ``name==version``. Those are fetched with ``pip download --no-deps
--only-binary=:all:`` for CPython 3.12 manylinux x86-64; the few published as sdists only
(``SDIST_ONLY``, or any whose download fails) are built here with ``pip wheel --no-deps`` (they are
pure Python). About 130 wheels, ~51 MB: one 64 MiB transfer to the device machine.

    .venv/bin/python benchmarks/gpu_stack/wheels.py --dest runs/stackw/all [--list-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("prefect", "dvc", "mlflow-skinny", "fastapi")

# The GPU image's Python packages ("cuda" image, /work/.library/device/KINDS.md, "Packages:").
HAVE = (
    "absl-py, accelerate, aiofiles, aiohappyeyeballs, aiohttp, aiosignal, annotated-doc, anyio, "
    "attrs, botorch, build, certifi, charset-normalizer, chex, click, cloudpickle, cmake, "
    "colorama, contourpy, coverage, cuda-bindings, cuda-core, cuda-pathfinder, cuda-toolkit, "
    "cupy-cuda13x, cycler, cython, diffrax, e3nn, einops, equinox, etils, execnet, filelock, "
    "flatbuffers, flax, fonttools, formulaic, frozenlist, fsspec, gpytorch, grpcio, h11, h5py, "
    "hf-xet, httpcore, httpx, huggingface-hub, humanize, hypothesis, idna, imageio, iniconfig, "
    "interface-meta, jax, jax-cuda13-pjrt, jax-cuda13-plugin, jaxlib, jaxtyping, jinja2, joblib, "
    "kiwisolver, lazy-loader, lightning, lightning-utilities, linear-operator, lineax, llvmlite, "
    "lxml, markdown, markdown-it-py, markupsafe, matplotlib, mdurl, meson, ml-dtypes, mpi4py, "
    "mpmath, msgpack, multidict, multipledispatch, mypy-extensions, nanobind, narwhals, networkx, "
    "ninja, numba, numba-cuda, numpy, numpyro, nvidia-cublas, nvidia-cuda-cupti, "
    "nvidia-cuda-nvrtc, nvidia-cuda-runtime, nvidia-cudnn-cu13, nvidia-cufft, nvidia-cufile, "
    "nvidia-curand, nvidia-cusolver, nvidia-cusparse, nvidia-cusparselt-cu13, nvidia-ml-py, "
    "nvidia-nccl-cu13, nvidia-nvjitlink, nvidia-nvshmem-cu13, nvidia-nvtx, onnx, onnx-ir, "
    "onnxruntime, onnxscript, opencv-python-headless, optax, opt-einsum, opt-einsum-fx, "
    "optimistix, orbax-checkpoint, packaging, pandas, pathspec, patsy, peft, pillow, pip, pluggy, "
    "portalocker, prometheus-client, propcache, protobuf, psutil, pyarrow, pybind11, py-cpuinfo, "
    "pygments, pyparsing, pyproject-hooks, pyre-extensions, pytest, pytest-benchmark, pytest-cov, "
    "pytest-mock, pytest-timeout, pytest-xdist, python-dateutil, pytorch-lightning, pyyaml, regex, "
    "requests, rich, sacrebleu, safetensors, scikit-build-core, scikit-image, scikit-learn, scipy, "
    "seaborn, sentencepiece, sentence-transformers, setuptools, shellingham, simplejson, six, "
    "sortedcontainers, statsmodels, sympy, tabulate, tensorboard, tensorboard-data-server, "
    "tensorstore, threadpoolctl, tifffile, tiktoken, timm, tokenizers, toolz, torch, torchaudio, "
    "torchdiffeq, torch-geometric, torchmetrics, torchvision, tqdm, transformers, treescope, "
    "triton, typer, typing-extensions, typing-inspect, urllib3, uvloop, wadler-lindig, werkzeug, "
    "wheel, wrapt, xarray, xxhash, yarl, zipp"
)

# Published as source distributions only: built here into (pure-Python) wheels.
SDIST_ONLY = {"antlr4-python3-runtime"}

PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_5_x86_64",
)

# The GPU machine's interpreter, for evaluating requirement markers.
TARGET_ENV = {
    **default_environment(),
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def parse_names(text: str) -> set[str]:
    """Canonical package names from text: one per line or comma separated; ``#`` starts a
    comment."""
    names = set()
    for line in text.splitlines():
        for item in line.split("#", 1)[0].split(","):
            if item.strip():
                names.add(canonicalize_name(item.strip()))
    return names


def needed(req: Requirement, walked: list[str]) -> bool:
    """Whether ``req`` holds on the target for the ``walked`` part of its parent: ``""`` (its
    base requirements) and/or extras."""
    if req.marker is None or req.marker.evaluate({**TARGET_ENV, "extra": ""}):
        return "" in walked  # a base requirement
    return any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in walked if e)


def closure(roots: Iterable[str], have: set[str]) -> dict[str, str]:
    """``{canonical name: installed version}`` of the dependency closure of ``roots`` on the
    target, without the packages in ``have`` (whose own dependencies the image has; only the
    extras a parent asks of them are followed). Exits naming any dependency not installed here."""
    pins: dict[str, str] = {}
    missing: set[str] = set()
    done: set[tuple[str, str]] = set()  # (name, extra) already walked; "" = the base requirements
    todo: list[tuple[str, set[str]]] = [(canonicalize_name(r), set()) for r in roots]
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name not in have:  # the image has it, extras and all, or the run will say
                missing.add(name)
            continue
        if name not in have:
            pins[name] = dist.version
        # An image package brings its base requirements; only requested extras are walked.
        wanted = [e for e in sorted(extras) if (name, e) not in done]
        if name not in have and (name, "") not in done:
            wanted.insert(0, "")
        if not wanted:
            continue
        done.update((name, e) for e in wanted)
        for line in dist.requires or []:
            req = Requirement(line)
            if needed(req, wanted):
                todo.append((canonicalize_name(req.name), set(req.extras)))
    if missing:
        sys.exit(f"not installed in {sys.prefix}: {', '.join(sorted(missing))}")
    return pins


def pip(*args: str) -> int:
    """``python -m pip ARGS`` with this interpreter; its exit status."""
    return subprocess.run([sys.executable, "-m", "pip", *args], check=False).returncode


def download(specs: list[str], dest: Path) -> int:
    """``pip download`` the CPython 3.12 manylinux x86-64 wheels of ``specs`` (no dependencies)."""
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    common = ["--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    return pip("download", "-q", *common, "--implementation", "cp", *plat, "-d", str(dest), *specs)


def build(spec: str, dest: Path) -> None:
    """A wheel built here from the sdist of ``spec``."""
    if pip("wheel", "-q", "--no-deps", spec, "-w", str(dest)) != 0:
        sys.exit(f"pip wheel {spec} failed")


def fetch(pins: dict[str, str], dest: Path) -> None:
    """All of ``pins`` into ``dest`` as wheels: one ``pip download`` for the binary ones (one per
    package if that fails, to find which have none), ``pip wheel`` for the rest."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = {n: f"{n}=={v}" for n, v in sorted(pins.items())}
    binary = [s for n, s in specs.items() if n not in SDIST_ONLY]
    built = [s for n, s in specs.items() if n in SDIST_ONLY]
    if download(binary, dest) != 0:
        print("pip download failed; retrying one package at a time", file=sys.stderr)
        built += [s for s in binary if download([s], dest) != 0]
    for s in built:
        print(f"building {s} from its sdist", file=sys.stderr)
        build(s, dest)


def wheel_files(pins: dict[str, str], dest: Path) -> list[Path]:
    """The wheels in ``dest`` of the pinned packages at their pinned versions."""
    out = []
    for f in sorted(dest.glob("*.whl")):
        name, version = f.name.split("-")[:2]
        if pins.get(canonicalize_name(name)) == version:
            out.append(f)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=Path("runs/stackw/all"), help="wheel folder")
    ap.add_argument("--have", type=Path, help="names the GPU image has (default: HAVE)")
    ap.add_argument("--list-only", action="store_true", help="print the pins; download nothing")
    args = ap.parse_args(argv)
    have = parse_names(args.have.read_text() if args.have else HAVE)
    pins = closure(ROOTS, have)
    for n, v in sorted(pins.items()):
        print(f"{n}=={v}")
    print(f"{len(pins)} packages")
    if args.list_only:
        return
    fetch(pins, args.dest)
    files = wheel_files(pins, args.dest)
    got = {canonicalize_name(f.name.split("-")[0]) for f in files}
    lacking = sorted(set(pins) - got)
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} wheels, {mb:.1f} MB in {args.dest}")
    if lacking:
        sys.exit(f"no wheel in {args.dest} for: {', '.join(lacking)}")


if __name__ == "__main__":
    main()
