"""Shared test helpers: tiny BERT-shaped checkpoints written to tmp_path, a snapshot of a folder
(to assert that nothing was written), the ``lines`` command run in-process, and a temporary
Prefect API for the flow tests (one per test module)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lines.io import save_state_dict

_CACHE = tempfile.mkdtemp(prefix="lines-test-cache-")


def pytest_configure(config: pytest.Config) -> None:
    # The sha256 cache goes to a temp folder, never the user's ~/.cache (subprocesses inherit it).
    os.environ["LINES_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """A temporary Prefect server for the module's flows (``prefect_test_harness``)."""
    pytest.importorskip("prefect")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def bert_shapes(
    layers: int = 2, hidden: int = 8, intermediate: int = 16, vocab: int = 32, positions: int = 16
) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of a Hugging Face ``BertModel`` state dict (all float32)."""
    h, i = hidden, intermediate
    s: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab, h),
        "embeddings.position_embeddings.weight": (positions, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for ell in range(layers):
        p = f"encoder.layer.{ell}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            s[p + name + ".weight"] = (h, h)
            s[p + name + ".bias"] = (h,)
        s[p + "attention.output.dense.weight"] = (h, h)
        s[p + "attention.output.dense.bias"] = (h,)
        s[p + "attention.output.LayerNorm.weight"] = (h,)
        s[p + "attention.output.LayerNorm.bias"] = (h,)
        s[p + "intermediate.dense.weight"] = (i, h)
        s[p + "intermediate.dense.bias"] = (i,)
        s[p + "output.dense.weight"] = (h, i)
        s[p + "output.dense.bias"] = (h,)
        s[p + "output.LayerNorm.weight"] = (h,)
        s[p + "output.LayerNorm.bias"] = (h,)
    s["pooler.dense.weight"] = (h, h)
    s["pooler.dense.bias"] = (h,)
    return s


def random_state_dict(
    shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}


def perturbed(
    sd: dict[str, torch.Tensor], seed: int, scale: float = 0.01
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (v.float() + scale * torch.randn(v.shape, generator=g)).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in sd.items()
    }


@dataclass
class CkptSet:
    """A pretrained checkpoint and N fine-tuned ones on disk, with their tensors."""

    root: Path
    pretrained: Path
    finetuned: list[Path]
    base: dict[str, torch.Tensor]
    fts: list[dict[str, torch.Tensor]]

    def args(self, n: int | None = None) -> list[str]:
        fts = self.finetuned if n is None else self.finetuned[:n]
        return ["--pretrained", str(self.pretrained), "--finetuned", *map(str, fts)]


def write_family(
    root: Path, n: int = 3, layers: int = 2, seed: int = 0, **shape_kw: int
) -> CkptSet:
    root.mkdir(parents=True, exist_ok=True)
    base = random_state_dict(bert_shapes(layers, **shape_kw), seed)
    pre = save_state_dict(root / "pretrained.safetensors", base)
    fts, paths = [], []
    for i in range(n):
        sd = perturbed(base, seed + 1 + i)
        fts.append(sd)
        paths.append(save_state_dict(root / f"ft_{i}.safetensors", sd))
    return CkptSet(root, pre, paths, base, fts)


@pytest.fixture
def bert_ckpts(tmp_path: Path) -> CkptSet:
    """pretrained.safetensors + ft_0..ft_2.safetensors of a 2-layer tiny BERT in tmp_path/ckpt."""
    return write_family(tmp_path / "ckpt")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) → sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(root)) + "/": "dir" for p in root.rglob("*") if p.is_dir()}


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], CliResult]:
    """Run ``lines ARGS`` in-process through ``lines.cli.main``; argparse exits become codes."""
    from lines.cli import main

    def run(argv: Sequence[str]) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help, usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run
