"""A copy of the project whose DVC stages are fast fakes, for testing the orchestration.

``make_fake_project(dst)`` copies the real ``dvc.yaml`` (only the two command prefixes change:
``python -m lines.pipeline.fetch`` / ``python -m lines.pipeline.stages`` become
``python fake_stage.py …``), ``params.yaml``, ``profiles/``, ``flows/``, ``tasks/``, ``orchestration/``,
``prefect.yaml``, ``prefect.toml`` and ``lines/`` (the stages' deps), then makes it a git + DVC
repository. The fake stages accept the real command lines (same options, parsed by the real
stage parser's module loaded without importing torch) and write outputs in the real formats with
deterministic numbers; the report stage runs the real ``lines/pipeline/report.py``.
``FAKE_STAGE_SLEEP`` (seconds) slows the fine-tuning stages down and ``FAKE_STAGE_TRACE`` (a file)
appends "start/end <stage> <time>" lines, for the concurrency tests; ``FAKE_STAGE_FAIL`` (a task)
makes its fine-tuning fail, ``FAKE_STAGE_KILL_ONCE`` (a marker file) kills the first fine-tuning
by SIGKILL after it wrote half an output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_STAGE = r'''
"""Fake pipeline stages (tests/fake_pipeline.py): real CLI, real output formats, no torch."""
import argparse, csv, hashlib, importlib.util, json, os, sys, time, types
from pathlib import Path


def acc(*key):
    h = hashlib.sha256(repr(key).encode()).digest()
    return round(0.5 + 0.5 * h[0] / 255, 6)


def wjson(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    obj = {"schema_version": 1, **obj}  # the version of lines/protocol/schemas.py
    Path(path).write_text(json.dumps(obj, indent=2))


def wcsv(path, rows):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cols = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{v:.6g}" if isinstance(v, float) else v) for c, v in r.items()})


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def trace(what, stage):
    t = os.environ.get("FAKE_STAGE_TRACE")
    if t:
        with open(t, "a") as f:
            f.write(f"{what} {stage} {time.time():.3f} {os.getpid()}\n")


def stub(name, **attrs):
    m = sys.modules.get(name) or types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def load(name, path):
    """A real module of the project, loaded from its file without importing `lines` (torch)."""
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    sys.modules[name] = m
    spec.loader.exec_module(m)
    return m


METHOD_KEYS = {"ties_density": float, "ties_scope": str, "consensus_k": int, "tall_lambda": float,
               "dare_drop_rate": float}


def add_method_options(p, skip=(), grid_nargs="+"):
    # The merge options the real parser generates from the methods (which import torch).
    for m in ("task_arithmetic", "ties", "consensus", "dare", "magnitude_prune"):
        p.add_argument(f"--{m}_lambdas", nargs=grid_nargs, type=float, default=None)
        p.add_argument(f"--{m}_betas", nargs=grid_nargs, type=float, default=None)
    for k, typ in METHOD_KEYS.items():
        p.add_argument(f"--{k}", type=typ, default=None)


def parser():
    # The real stage parser, loaded from its file so that `lines` (and torch) is not imported.
    stub("lines")
    stub("lines.errors", LinesError=type("LinesError", (Exception,), {}))
    stub("lines.merging.options", add_method_options=add_method_options)
    stub("lines.protocol")
    load("lines.protocol.options", "lines/protocol/options.py")
    return load("_stages", "lines/pipeline/stages.py").build_parser()


def base_eval(a):
    tasks = a.tasks
    res = {"pretrained": {s: {t: acc("pre", s, t) for t in tasks} for s in ("val", "test")},
           "finetuned": {t: {s: {u: (0.95 if u == t else acc("ft", t, s, u)) for u in tasks}
                             for s in ("val", "test")} for t in tasks}}
    res["examples"] = {s: {t: 32 for t in tasks} for s in ("val", "test")}
    wjson(a.out, res)


def merge(a):
    base = json.loads(Path(a.base_eval).read_text())
    tasks = a.tasks
    res = {"tasks": tasks, "block_policy": a.block_policy, "num_blocks": 8, "methods": {}}
    rows = []
    for m in a.methods:
        lams = getattr(a, f"{m}_lambdas", None) or a.lambdas
        betas = getattr(a, f"{m}_betas", None) or a.betas
        alpha = round(0.25 + acc("alpha", m) / 4, 6)
        entry = {"params": {"density": a.ties_density} if m == "ties" else
                           ({"k": a.consensus_k, "tall_lambda": a.tall_lambda} if m == "consensus" else {}),
                 "input_sha256": [hashlib.sha256(Path(f"{a.finetune}/{t}/model.safetensors").read_bytes()).hexdigest() for t in tasks],
                 "pretrained_sha256": hashlib.sha256(Path(f"{a.heads}/backbone.safetensors").read_bytes()).hexdigest(),
                 "norms": {"task_vector_sum": 1.0, "merged_task_vector": 1.0}}
        for variant, grid in (("baseline", lams), ("lines", betas)):
            sweep = []
            for c in grid:
                va = {t: acc(m, variant, c, "val", t) for t in tasks}
                sweep.append({"coef": c, "val_avg_norm": mean(va[t] / base["finetuned"][t]["val"][t] for t in tasks),
                              "val_avg_acc": mean(va.values()), **{f"val_acc_{t}": va[t] for t in tasks}})
            best = max(sweep, key=lambda r: r["val_avg_norm"])
            ta = {t: acc(m, variant, best["coef"], "test", t) for t in tasks}
            tn = {t: ta[t] / base["finetuned"][t]["test"][t] for t in tasks}
            rep = {"test_acc": ta, "test_norm": tn, "test_avg_acc": mean(ta.values()),
                   "test_avg_norm": mean(tn.values())}
            if variant == "baseline":
                entry["baseline"] = {"lambda": best["coef"], **rep}
            else:
                entry["lines"] = {"alpha": alpha, "beta": best["coef"], "lambdas": [alpha] * 8, **rep}
            rows += [{"method": m, "variant": variant, **r} for r in sweep]
        res["methods"][m] = entry
    wjson(f"{a.out}/merge.json", res)
    wcsv(f"{a.out}/merge_sweep.csv", rows)
    Path(f"{a.out}/sweeps").mkdir(parents=True, exist_ok=True)
    for m in a.methods:
        for variant in ("baseline", "lines"):
            wcsv(f"{a.out}/sweeps/{m}-{variant}.csv", [r for r in rows if r["method"] == m and r["variant"] == variant])


def tc(t, g, s, tasks):
    return {"target_acc": acc("t", t, g, s), "target_norm": acc("tn", t, g, s),
            "control_acc": acc("c", t, g, s), "control_norm": acc("cn", t, g, s)}


def edit(a):
    rows, summary = [], {"gammas": a.gammas, "tasks": {}}
    for t in a.tasks:
        per = []
        for g in a.gammas:
            rec = {"task": t, "gamma": g}
            for s in ("val", "test"):
                rec.update({f"{s}_{k}": v for k, v in tc(t, g, s, a.tasks).items()})
            rec["val_score"] = 2 * rec["val_target_norm"] + rec["val_control_norm"]
            per.append(rec)
        rows += per
        best = max(per, key=lambda r: r["val_score"])
        summary["tasks"][t] = {"best_gamma": best["gamma"], "best": best, "finetuned": per[-1]}
    summary["average_at_best"] = {k: mean(summary["tasks"][t]["best"][k] for t in a.tasks)
                                  for k in ("test_target_norm", "test_control_norm", "test_target_acc", "test_control_acc")}
    wjson(f"{a.out}/edit.json", summary)
    wcsv(f"{a.out}/edit_sweep.csv", rows)


def soups(a):
    n = 1 + len(a.seeds)
    res = {"task": a.task, "num_models": n, "soups": {}, "individual": [
        {"model": f"seed{i}", **{f"{s}_{k}": v for s in ("val", "test") for k, v in tc(a.task, i, s, a.tasks).items()}}
        for i in range(n)]}
    for kind in ("uniform", "greedy"):
        res["soups"][kind] = {"members": [f"m{i}" for i in range(n)],
                              "plain": {f"{s}_{k}": v for s in ("val", "test") for k, v in tc(kind, 1, s, a.tasks).items()},
                              "lines": {"gamma": a.gammas[0], **{f"test_{k}": v for k, v in tc(kind, 0, "test", a.tasks).items()}}}
    res["greedy_history"] = []
    wjson(f"{a.out}/soups.json", res)


def wiseft(a):
    rows = [{"task": t, "variant": v, "gamma": g, **tc(t + v, g, "test", a.tasks)}
            for t in a.wiseft_tasks for g in a.gammas for v in ("wiseft", "wiseft+lines")]
    wjson(f"{a.out}/wiseft.json", {"tasks": a.wiseft_tasks, "gammas": a.gammas, "lines_gamma": a.lines_gamma, "rows": rows})
    wcsv(f"{a.out}/wiseft_sweep.csv", rows)


def fig1(a):
    base = json.loads(Path(a.base_eval).read_text())
    points = [{"task": t, "schedule": k, "gamma": g, **tc(t + k, g, "test", a.tasks)}
              for t in a.fig1_tasks for k in ("shallow", "deep") for g in a.gammas]
    wjson(f"{a.out}/fig1.json", {"tasks": a.tasks, "fig_tasks": a.fig1_tasks, "gammas": a.gammas,
                                 "num_blocks": 6, "zeroshot": base["pretrained"]["test"],
                                 "points": points})


def schedules(a):
    # The real stage needs torch; the fake writes linear and each other family with a made-up
    # accuracy (no test_correct, so the report shows no interval) in the real schema.
    fams = sorted({s.split(":")[0] for s in a.specs})
    row = lambda f, c: {"schedule": f, "evaluations": a.budget, "lambdas": [c] * 6}  # noqa: E731
    merging = {m: {f: {**row(f, 0.5), "alpha": 0.125, "beta": 0.5, "val_avg_norm": 0.9,
                       "test_avg_norm": 0.9 - 0.01 * i} for i, f in enumerate(fams)}
               for m in a.methods}
    editing = {t: {f: {**row(f, 0.5), "gamma": 0.5, "target_norm": 0.99, "control_norm": 0.95}
                   for f in fams} for t in a.edit_tasks}
    wjson(f"{a.out}/schedules.json", {"tasks": a.tasks, "budget": a.budget,
                                      "families": {f: [f] for f in fams}, "num_blocks": 6,
                                      "alpha_mults": a.alpha_mults, "merging": merging,
                                      "editing": editing})


def learned(a):
    # Made-up accuracies and costs in the real schema (no test_correct: no intervals).
    base = json.loads(Path(a.base_eval).read_text())
    ft = {t: base["finetuned"][t]["test"][t] for t in a.tasks}
    methods = {}
    for i, m in enumerate(a.methods):
        acc = {t: tc(t + m, 0.5, "test", a.tasks)["target_acc"] for t in a.tasks}
        norm = {t: acc[t] / ft[t] for t in a.tasks}
        methods[m] = {"test_acc": acc, "test_norm": norm,
                      "test_avg_acc": sum(acc.values()) / len(acc),
                      "test_avg_norm": sum(norm.values()) / len(norm),
                      "cost": {"wall_s": 1.0 + i, "forward": 100 * (i + 1), "backward": 10 * i,
                               "held_bytes": 2**20 * (i + 2), "cuda_peak_bytes": None}}
    wjson(f"{a.out}/learned.json", {"tasks": a.tasks, "num_blocks": 6, "device": "cpu",
                                    "adamerging_inputs": a.adamerging_inputs, "methods": methods})


def report(a):
    # The real report code (lines/protocol/*, lines/pipeline/report.py) loaded from its files.
    stub("lines")
    stub("lines.errors", LinesError=type("LinesError", (Exception,), {}))
    stub("lines.protocol")
    stub("lines.io", write_json_atomic=lambda path, obj: wjson(path, obj))
    for name in ("scores", "results", "schemas", "intervals", "report", "regime", "plots_ci",
                 "schedules_report", "learned_report"):
        load(f"lines.protocol.{name}", f"lines/protocol/{name}.py")
    m = load("_report", "lines/pipeline/report.py")
    m.run_report(a.base_eval, a.heads / "heads.json", a.edit, a.merge, a.soups, a.wiseft, a.out,
                 suite=a.suite, backbone=a.backbone, fig1_dir=a.fig1, schedules_dir=a.schedules,
                 learned_dir=a.learned, n_boot=a.bootstrap)


def main():
    stage = sys.argv[1]
    label = f"{stage}:{sys.argv[sys.argv.index('--task') + 1]}" if "--task" in sys.argv else stage
    trace("start", label)
    if stage == "fetch":
        out = Path(sys.argv[sys.argv.index("--out") + 1])
        wjson(out / "fetch.json", {"models": {"minilm": {"files": {"model.safetensors": "ab" * 32}}}})
    else:
        a = parser().parse_args(sys.argv[1:])
        if stage == "heads":
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "backbone.safetensors").write_bytes(b"pretrained")
            wjson(a.out / "heads.json", {"tasks": {t: {"probe_val_acc": acc("probe", t)} for t in a.tasks}})
        elif stage == "finetune":
            time.sleep(float(os.environ.get("FAKE_STAGE_SLEEP", "0")))
            if os.environ.get("FAKE_STAGE_FAIL") == a.task:
                sys.exit(f"fake failure of {a.task}")
            once = os.environ.get("FAKE_STAGE_KILL_ONCE")  # a marker file: killed mid-write once
            if once and not Path(once).exists():
                Path(once).write_text(a.task)
                a.out.mkdir(parents=True, exist_ok=True)
                (a.out / "model.safetensors").write_bytes(b"half-written")
                import signal
                os.kill(os.getpid(), signal.SIGKILL)
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "model.safetensors").write_bytes(f"{a.task} {a.seed} {a.lr}".encode())
        else:
            {"base_eval": base_eval, "merge": merge, "edit": edit, "soups": soups,
             "wiseft": wiseft, "fig1": fig1, "schedules": schedules, "learned": learned,
             "report": report}[stage](a)
    trace("end", label)


main()
'''


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=tests@lines", "-c", "user.name=tests", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def make_fake_project(dst: Path, *, src: Path = ROOT) -> Path:
    """A git + DVC repository at ``dst`` running the fake stages; returns ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("flows", "tasks", "orchestration", "profiles", "lines"):
        shutil.copytree(src / d, dst / d, ignore=ignore, dirs_exist_ok=True)
    for f in ("prefect.yaml", "prefect.toml", "scripts/stack.sh", "scripts/dvc_plots_template.py"):
        if (src / f).exists():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, dst / f)
    shutil.copy2(src / "profiles/smoke.yaml", dst / "params.yaml")
    text = (src / "dvc.yaml").read_text()
    text = text.replace("python -m lines.pipeline.fetch", "python fake_stage.py fetch")
    text = text.replace("python -m lines.pipeline.stages", "python fake_stage.py")
    (dst / "dvc.yaml").write_text(text)
    (dst / "fake_stage.py").write_text(FAKE_STAGE)
    (dst / ".gitignore").write_text("__pycache__/\n/.venv/\n")
    _git(dst, "init", "-q")
    _git(dst, "config", "user.email", "tests@lines")  # dvc exp save commits
    _git(dst, "config", "user.name", "tests")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=dst, check=True, env=_env())
    if (src / ".dvc/plots_offline.html").exists():
        shutil.copy2(src / ".dvc/plots_offline.html", dst / ".dvc/plots_offline.html")
    subprocess.run(  # the same settings as the real project
        [sys.executable, "scripts/dvc_plots_template.py", "configure", "--root", str(dst)],
        cwd=dst,
        check=True,
        env=_env(),
        capture_output=True,
    )
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "fake project")
    return dst


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    return env
