"""Run a suite's dvc.yaml stages without DVC, with the command lines DVC would build, in the
file's order (which is a topological order in this project's pipelines). For machines without DVC
(a GPU runner with no package registry); ``dvc repro`` stays the reproducible way.

    python scripts/run_stages.py llm/dvc.yaml --params llm/params.yaml --workdir runs/llm-gpu \
        [--stages fetch finetune base_eval ...] [--set rl.steps=10 ...]

Interpolation follows DVC's: ``${section}`` unpacks a dict as ``--key value`` (lists as
``--key a b``, true booleans as ``--key``), ``${a.b}`` is a value, ``foreach``/``do`` expands with
``${item}`` (stage ``name@item``). Commands run in ``--workdir`` with the project root on
PYTHONPATH; each stage's time goes to ``<workdir>/stage_times.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lines.protocol.options import unpack_section  # noqa: E402

_VAR = re.compile(r"\$\{([^}]+)\}")


def unpack(section: dict[str, Any]) -> str:
    return " ".join(shlex.quote(x) for x in unpack_section(section))


def lookup(params: dict[str, Any], path: str) -> Any:
    v: Any = params
    for part in path.split("."):
        v = v[part]
    return v


def interpolate(s: str, params: dict[str, Any], item: Any = None) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1).strip()
        v = item if key == "item" else lookup(params, key)
        return unpack(v) if isinstance(v, dict) else str(v)

    return _VAR.sub(sub, s)


def commands(dvc_yaml: Path, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(stage name, shell command) for every stage, foreach expanded."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    out = []
    for name, st in stages.items():
        if "foreach" in st:
            items = st["foreach"]
            if isinstance(items, str):
                items = lookup(params, _VAR.fullmatch(items.strip()).group(1))  # type: ignore[union-attr]
            for it in items:
                out.append((f"{name}@{it}", interpolate(st["do"]["cmd"], params, it)))
        else:
            out.append((name, interpolate(st["cmd"], params)))
    return out


def apply_sets(params: dict[str, Any], sets: list[str]) -> None:
    for s in sets:
        key, _, val = s.partition("=")
        *head, last = key.split(".")
        lookup(params, ".".join(head))[last] = yaml.safe_load(val) if head else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dvc_yaml", type=Path)
    ap.add_argument("--params", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--stages", nargs="*", help="stage names (a foreach stage: all its items)")
    ap.add_argument(
        "--set", nargs="*", action="extend", default=[], help="section.key=value overrides"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args()
    params = yaml.safe_load(a.params.read_text())
    apply_sets(params, a.set)
    cmds = [
        (n, c)
        for n, c in commands(a.dvc_yaml, params)
        if not a.stages or n in a.stages or n.split("@")[0] in a.stages
    ]
    a.workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    times_path = a.workdir / "stage_times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    for name, cmd in cmds:
        print(f"[run_stages] {name}: {cmd}", flush=True)
        if a.dry_run:
            continue
        t0 = time.perf_counter()
        rc = subprocess.call(
            cmd.replace("python ", f"{shlex.quote(sys.executable)} ", 1),
            shell=True,
            cwd=a.workdir,
            env=env,
        )
        times[name] = round(time.perf_counter() - t0, 2)
        times_path.write_text(json.dumps(times, indent=1) + "\n")
        if rc != 0:
            sys.exit(f"[run_stages] stage {name} failed with exit code {rc}")
        print(f"[run_stages] {name} done in {times[name]} s", flush=True)


if __name__ == "__main__":
    main()
