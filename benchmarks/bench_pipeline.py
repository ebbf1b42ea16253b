"""Time the embedded default pipeline: a cold `dvc repro` in a fresh workspace, then a no-op
`dvc repro`. Records per-stage wall times (from DVC's log), CPU time, the machine and its load
average, so a figure taken on a busy machine says so.

    .venv/bin/python benchmarks/bench_pipeline.py [--profile profiles/default.yaml] [--out benchmarks/results/pipeline_text_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(ws: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "true",
        "PYTHONPATH": str(ws),
        "PYTHONUNBUFFERED": "1",
    }


def _repro(ws: Path) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=ws, env=_env(ws), capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"dvc repro failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, res.stdout + res.stderr


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", type=Path, default=ROOT / "profiles" / "default.yaml")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_text_cpu.json"
    )
    ap.add_argument("--keep", type=Path, default=None, help="copy the workspace's out/report here")
    a = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="lines-bench-pipeline-"))
    try:
        shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
        shutil.copy(a.profile, ws / "params.yaml")
        shutil.copytree(ROOT / "lines", ws / "lines", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
        subprocess.run(
            [sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True, env=_env(ws)
        )
        subprocess.run(
            [sys.executable, "-m", "dvc", "config", "core.analytics", "false"],
            cwd=ws,
            check=True,
            env=_env(ws),
        )
        load_before = os.getloadavg()
        cold_wall, cold_cpu, log = _repro(ws)
        load_after = os.getloadavg()
        times = [float(x) for x in re.findall(r"stage \S+ done in ([\d.]+)s", log)]
        names = re.findall(r"Running stage '([^']+)'", log)
        # `fetch` prints no "done in" line; map names to times only when every other stage did
        # (a dict of stage names would collapse the foreach stages, which share one name).
        per_stage = dict(zip(names[1:], times, strict=True)) if len(names) - 1 == len(times) else {}
        noop = [_repro(ws)[0] for _ in range(3)]
        result = {
            "profile": str(a.profile.relative_to(ROOT))
            if a.profile.is_relative_to(ROOT)
            else str(a.profile),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "cold_repro_wall_s": round(cold_wall, 1),
            "cold_repro_cpu_s": round(cold_cpu, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "stage_wall_s": per_stage,
            "noop_repro_wall_s": [round(x, 2) for x in noop],
            "budget": {"cold_s": 1500, "noop_s": 2.0},  # issue 11: ≤ 25 min cold, ≤ 2 s no-op
        }
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        if a.keep:
            shutil.copytree(ws / "out" / "report", a.keep, dirs_exist_ok=True)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(ws, ignore_errors=True)


if __name__ == "__main__":
    main()
