"""Thin Prefect tasks over DVC: reproduce stages, find which are stale, record stages that ran
elsewhere, save the experiment, render the plots. Each takes the workspace path and returns paths,
stage names or small JSON-able records, never model weights.

Retries (``transient``): the bookkeeping commands retry a few times when DVC's repo lock is held
for a moment by someone's ``dvc status``; ``dvc repro`` retries once after a lock conflict or a
stage killed by a signal, resuming from the stages that already finished (their ``dvc.lock``
entries survive the failed attempt). A stage that fails by itself is not retried.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import task

from orchestration.proc import dvc_argv, logger, run_command, tool_env

LOG_DIR = ".dvc/tmp/lines-logs"


def log_file(workspace: Path, name: str) -> Path:
    """Where the tasks log the commands they run (one file per kind of command)."""
    return Path(workspace) / LOG_DIR / f"{name}.log"


def dvc(workspace: Path, *args: str, quiet: bool = False, log: str = "dvc") -> str:
    return run_command(
        dvc_argv(*args), Path(workspace), log_file=log_file(workspace, log), quiet=quiet
    )


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a second attempt can fix: DVC's repo lock held by another command, or a
    stage killed by a signal (the OOM killer); a stage that fails on its own fails again."""
    exc = state.result(raise_on_failure=False)
    text = str(exc)
    return "Unable to acquire lock" in text or "exited with -" in text


@task(name="dvc-repro", retries=1, retry_delay_seconds=5, retry_condition_fn=transient)
def dvc_repro(workspace: Path, targets: list[str]) -> list[str]:
    """``dvc repro TARGETS``: runs what is stale (or restores it from the run cache)."""
    dvc(workspace, "repro", *targets, log="repro")
    return targets


@task(name="dvc-stale-stages", retries=3, retry_delay_seconds=2, retry_condition_fn=transient)
def dvc_stale_stages(workspace: Path, targets: list[str]) -> list[str]:
    """The stages among ``targets`` (names or foreach groups) whose outputs do not match their
    deps/params/cmd; their upstream must already be up to date for the answer to be final."""
    out = dvc(workspace, "status", "--json", *targets, quiet=True, log="status")
    start = out.find("{")
    status = json.loads(out[start:]) if start >= 0 else {}
    return sorted(k for k in status if not k.endswith(".dvc"))


def _dvc_api(workspace: Path, code: str, *args: str) -> Any:
    """Run a short script against DVC's Python API in a child process (DVC keeps global state;
    the flow process stays clean) and return the JSON it prints last."""
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys\nfrom dvc.repo import Repo\nr = Repo('.')\n" + code,
            *args,
        ],
        cwd=workspace,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"DVC API call failed in {workspace}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


@task(name="dvc-stage-specs")
def dvc_stage_specs(workspace: Path, stages: list[str]) -> dict[str, dict[str, Any]]:
    """Each stage's resolved command (``${...}`` interpolated from params.yaml), its working
    directory relative to the project root (``llm`` for ``llm/dvc.yaml``'s stages) and its
    outputs relative to that directory, so a unit elsewhere can run exactly what ``dvc repro``
    would."""
    code = (
        "import os\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    (st,) = r.stage.collect(name)\n"
        "    cmd = st.cmd if isinstance(st.cmd, str) else ' && '.join(st.cmd)\n"
        "    wdir = os.path.relpath(st.wdir, r.root_dir)\n"
        "    out[name] = {'cmd': cmd, 'wdir': wdir, 'outs': [str(o.def_path) for o in st.outs]}\n"
        "print(json.dumps(out))\n"
    )
    return _dvc_api(workspace, code, *stages)


@task(name="dvc-run-cached")
def dvc_run_cached(workspace: Path, stages: list[str]) -> list[str]:
    """The stages among ``stages`` whose outputs DVC's run cache holds for their current
    deps/params/cmd (a configuration that ran before): ``dvc repro`` restores those in seconds,
    so they are not worth fanning out. A read-only probe (``restore(dry=True)``) of DVC's stage
    cache; on any doubt a stage counts as not cached."""
    code = (
        "out = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        (st,) = r.stage.collect(name)\n"
        "        st.save_deps()\n"  # hashes in memory only; nothing is written
        "        r.stage_cache.restore(st, dry=True)\n"
        "        out.append(name)\n"
        "    except Exception:\n"
        "        pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        return _dvc_api(workspace, code, *stages)
    except RuntimeError:
        return []


def uncached_outputs(workspace: Path) -> list[str]:
    """Existing stage outputs kept in git rather than the DVC cache (``cache: false``, e.g. the
    report's metrics.json): ``dvc exp save`` must be told to include them, even when ignored."""
    code = (
        "print(json.dumps(sorted({str(o.def_path) for st in r.index.stages for o in st.outs\n"
        "                         if not o.use_cache and o.exists})))\n"
    )
    return _dvc_api(workspace, code)


@task(name="dvc-commit", retries=3, retry_delay_seconds=2, retry_condition_fn=transient)
def dvc_commit(workspace: Path, stages: list[str]) -> list[str]:
    """Record stages whose commands ran outside ``dvc repro`` (fan-out units): hash their outputs
    into the cache and write their ``dvc.lock`` entries, so the next ``dvc repro`` skips them."""
    if stages:
        dvc(workspace, "commit", "--force", *stages, log="commit")
        # Also into the run cache, as `dvc repro` would have done: another workspace sharing this
        # cache, or this one after a parameter round trip, then restores them instead of rerunning.
        code = (
            "done = []\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        (st,) = r.stage.collect(name)\n"
            "        r.stage_cache.save(st)\n"
            "        done.append(name)\n"
            "    except Exception:\n"
            "        pass\n"
            "print(json.dumps(done))\n"
        )
        try:
            _dvc_api(workspace, code, *stages)
        except RuntimeError as e:
            logger().warning("run cache not updated for %s: %s", stages, e)
    return stages


def untracked_manifests(workspace: Path, pipeline_dir: str) -> list[str]:
    """The ``dvc.lock`` and ``.gitignore`` files git does not track under ``pipeline_dir``: DVC
    includes an untracked ``dvc.lock`` only at the project root, so a pipeline in a subfolder
    (``clip/``) names its own; every output of such a pipeline is in the DVC cache."""
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", pipeline_dir],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [p for p in untracked if p.endswith(("dvc.lock", ".gitignore"))]


@task(name="dvc-exp-save", retries=3, retry_delay_seconds=2, retry_condition_fn=transient)
def dvc_exp_save(
    workspace: Path, name: str, targets: list[str], pipeline_dir: str = "."
) -> dict[str, str]:
    """``dvc exp save -n NAME``: the workspace (params, dvc.lock, the uncached outputs such as
    metrics.json) becomes an experiment that ``dvc exp show`` lists. Returns name, ref, commit.
    ``pipeline_dir``: the folder of the pipeline's ``dvc.yaml`` inside the project."""
    root = pipeline_dir in ("", ".")
    untracked = (
        uncached_outputs(workspace) if root else untracked_manifests(workspace, pipeline_dir)
    )
    include = [a for p in untracked for a in ("--include-untracked", p)]
    # TARGETS: only the stages this flow reproduced are (re)committed; the others may have no
    # outputs in this workspace (a flow that runs `edit` never builds the soups' seeds).
    dvc(workspace, "exp", "save", "--force", "--name", name, *include, *targets, log="exp")
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for line in refs:
        if line.endswith("/" + name):
            rev, ref = line.split(" ", 1)
            return {"name": name, "ref": ref, "rev": rev}
    raise RuntimeError(f"dvc exp save reported success but no ref ends with '{name}'")


@task(name="dvc-plots-show")
def dvc_plots_show(workspace: Path, out_dir: Path) -> Path | None:
    """``dvc plots show`` into ``out_dir`` (offline template, see docs/orchestration.md); returns
    the HTML page, or None when no plot has data yet."""
    (Path(workspace) / out_dir).mkdir(parents=True, exist_ok=True)
    try:
        dvc(workspace, "plots", "show", "--out", str(out_dir), log="plots")
    except Exception as e:  # noqa: BLE001 - plots are a view; a missing sweep must not fail a run
        logger().warning("dvc plots show failed (%s); continuing without the HTML plots", e)
        return None
    page = Path(workspace) / out_dir / "index.html"  # an absolute out_dir wins the join
    return page if page.is_file() else None
