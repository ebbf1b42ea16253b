"""Peak memory of a streaming merge: an 8-checkpoint merge stays under twice one checkpoint, and
the peak does not grow with the number of checkpoints.

Each merge runs in a fresh interpreter that imports torch and lines, takes its RSS as the baseline,
resets the kernel's high-water mark (``/proc/self/clear_refs``; a sampling thread where that is not
allowed), runs ``merge_checkpoints`` and reports the peak RSS minus the baseline. The checkpoints
are BERT-shaped float32 files of ~76 MB whose word embedding alone is 62% of the model, so a merge
that held one whole tensor per input (N + 1 embeddings) would fail by far.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import bert_shapes

from lines.io import SafetensorsWriter, TensorInfo

SHAPES = bert_shapes(layers=4, hidden=384, intermediate=1536, vocab=30522, positions=512)
N_MAX = 8

CHILD = r"""
import json, os, resource, sys, threading, time
import torch
from lines.engine import merge_checkpoints
from lines.merging import make_method
from lines.scaling import Scaling

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)

folder, n, method, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
params, ext = json.loads(sys.argv[5]), sys.argv[6]
baseline = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    sampler = None
except OSError:
    peak = [baseline]
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status("VmRSS"))
            time.sleep(0.002)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
t0 = time.perf_counter()
merge_checkpoints(
    os.path.join(folder, "pretrained" + ext),
    [os.path.join(folder, f"ft_{i}{ext}") for i in range(n)],
    make_method(method, **params),
    Scaling.lines(beta=0.5),  # LiNeS with the automatic alpha
    out,
    progress=False,
    overwrite=True,
)
seconds = time.perf_counter() - t0
if sampler is None:
    high = status("VmHWM")
else:
    stop.set(); sampler.join()
    high = peak[0]
print(json.dumps({"baseline": baseline, "peak": high, "increase": high - baseline,
                  "seconds": seconds, "sampled": sampler is not None}))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """pretrained + N_MAX fine-tuned float32 safetensors files, streamed (one tensor in memory)."""
    folder = tmp_path_factory.mktemp("mem")
    specs = [(k, TensorInfo(s, torch.float32)) for k, s in SHAPES.items()]
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    for name in ["pretrained"] + [f"ft_{i}" for i in range(N_MAX)]:
        with SafetensorsWriter(folder / f"{name}.safetensors", specs) as w:
            for k, v in base.items():
                w.write(
                    k, v if name == "pretrained" else v + 1e-3 * torch.randn(v.shape, generator=g)
                )
            w.commit()
    size = (folder / "pretrained.safetensors").stat().st_size
    return folder, size


def measure(
    folder: Path, n: int, method: str, params: dict | None = None, ext: str = ".safetensors"
) -> dict:
    out = folder / f"out_{method}_{n}.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(folder),
            str(n),
            method,
            str(out),
            json.dumps(params or {}),
            ext,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out.unlink()
    out.with_suffix(".json").unlink()
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_checkpoint_is_large_with_one_dominant_tensor(checkpoints) -> None:
    _, size = checkpoints
    assert 60e6 < size < 100e6
    emb = 30522 * 384 * 4
    assert emb / size > 0.5  # a whole-tensor merge would hold (N + 1) × this


CASES = [
    pytest.param("task_arithmetic", {}, id="task_arithmetic+lines"),
    pytest.param("ties", {"density": 0.2, "scope": "global"}, id="ties_global+lines"),
]


@pytest.mark.parametrize("method, params", CASES)
def test_eight_checkpoint_merge_stays_under_two_checkpoints(checkpoints, method, params) -> None:
    folder, size = checkpoints
    m = measure(folder, N_MAX, method, params)
    assert m["increase"] < 2 * size, (
        f"{method}: peak RSS grew by {m['increase'] / 1e6:.0f} MB = "
        f"{m['increase'] / size:.2f} × one checkpoint ({size / 1e6:.0f} MB)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("method, params", CASES)
def test_peak_does_not_grow_with_n(checkpoints, method, params) -> None:
    folder, size = checkpoints
    small = measure(folder, 2, method, params)
    large = measure(folder, N_MAX, method, params)
    grow = large["increase"] - small["increase"]
    assert grow < 0.5 * size, (
        f"{method}: N=2 +{small['increase'] / 1e6:.0f} MB, N={N_MAX} "
        f"+{large['increase'] / 1e6:.0f} MB (checkpoint {size / 1e6:.0f} MB)"
    )


@pytest.mark.slow
def test_torch_file_inputs_stay_small(checkpoints) -> None:
    """Torch files are memory-mapped: every page ever read would count in RSS (9.4 × one
    checkpoint before the reader released them) unless the reader unmaps what it has copied."""
    folder, size = checkpoints
    from lines.io import load_state_dict

    for name in ["pretrained"] + [f"ft_{i}" for i in range(N_MAX)]:
        if not (folder / f"{name}.pt").exists():
            torch.save(load_state_dict(folder / f"{name}.safetensors"), folder / f"{name}.pt")
    m = measure(folder, N_MAX, "task_arithmetic", {}, ".pt")
    assert m["increase"] < 2 * size, (
        f"+{m['increase'] / 1e6:.0f} MB, checkpoint {size / 1e6:.0f} MB"
    )
