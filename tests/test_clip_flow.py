"""The CLIP benchmark end to end, offline: tiny random open_clip checkpoints in the tall_masks
layout for the 8 tasks of suite "8" (tests/clip_bench_fixture.py), generated image folders, the
real ``clip/dvc.yaml`` and ``clip/params.yaml`` in a temporary git + DVC workspace, run through
the ``clip-benchmark`` Prefect flow (``prefect_test_harness``) with MLflow tracking into a
temporary SQLite store. Checked: coefficients come from their grids and win on val, α = 1/N for
task arithmetic, the report and MLflow hold the JSON's numbers, and the same weights in the
FusionBench layout give the same merged results."""

from __future__ import annotations

import csv
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")
pytest.importorskip("dvc")

from clip_bench_fixture import SOUP_SEEDS, clip_params, make_bench  # noqa: E402
from pipeline_workspace import make_pipeline_workspace  # noqa: E402


def make_workspace(ws: Path) -> Path:
    """A git + DVC project holding the real clip/ pipeline and the lines/ sources it depends on."""
    return make_pipeline_workspace(
        ws, ("clip/dvc.yaml", "clip/params.yaml", "clip/.gitignore", "lines"), "clip project"
    )


def _flow_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    """The fixture's parameters as the flow's typed parameters plus dotted ``params``."""
    from flows.clip import ClipSources

    c, m = p["common"], p["merge"]
    typed = {
        "model": c["model"],
        "suite": c["suite"],
        "data_root": c["data_root"],
        "device": c["device"],
        "block_policy": c["block_policy"],
        "sources": ClipSources(**p["sources"]),
        "methods": m["methods"],
        "lambdas": m["lambdas"],
        "betas": m["betas"],
        "ties_lambdas": m["ties_lambdas"],
        "ties_betas": m["ties_betas"],
        "edit_gammas": p["edit"]["gammas"],
        "wiseft_gammas": p["wiseft"]["gammas"],
    }
    rest = {
        **{
            f"common.{k}": c[k]
            for k in ("heads", "text_heads", "threads", "num_workers", "precision", "batch_size")
        },
        **{f"hub.{k}": v for k, v in p["hub"].items()},
        "edit.edit_tasks": p["edit"]["edit_tasks"],
        **{f"wiseft.{k}": v for k, v in p["wiseft"].items() if k != "gammas"},
        **{f"soups.{k}": v for k, v in p["soups"].items()},
        **{f"schedules.{k}": v for k, v in p.get("schedules", {}).items()},
        **{f"learned.{k}": v for k, v in p.get("learned", {}).items()},
    }
    return {**typed, "params": rest}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _mlflow(uri: str, name: str) -> tuple[Any, list[Any]]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("lines-clip")
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    children = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'",
        max_results=1000,
    )
    return runs[0], children


def test_clip_benchmark_flow_end_to_end(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = make_bench(tmp_path / "bench")
    ws = make_workspace(tmp_path / "ws")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = clip_params(bench)

    from flows.clip import clip_benchmark

    res = clip_benchmark(workspace=str(ws), name="t-clip", **_flow_kwargs(p))
    clip = ws / "clip"
    out = clip / "out"
    merge = json.loads((out / "merge/merge.json").read_text())
    tasks = merge["tasks"]
    assert tasks == bench.tasks and len(tasks) == 8

    # --- coefficients: from their grids, the val-best point, α = 1/N for task arithmetic ----
    grids = {
        "task_arithmetic": (p["merge"]["lambdas"], p["merge"]["betas"]),
        "ties": (p["merge"]["ties_lambdas"], p["merge"]["ties_betas"]),
        "consensus": (p["merge"]["lambdas"], p["merge"]["betas"]),
    }
    with open(out / "merge/merge_sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    assert len(sweep) == sum(len(a) + len(b) for a, b in grids.values())
    for name, r in merge["methods"].items():
        lams, betas = grids[name]
        assert r["baseline"]["lambda"] in lams and r["lines"]["beta"] in betas
        for variant, grid, chosen in (
            ("baseline", lams, r["baseline"]["lambda"]),
            ("lines", betas, r["lines"]["beta"]),
        ):
            rows = [s for s in sweep if s["method"] == name and s["variant"] == variant]
            assert [float(s["coef"]) for s in rows] == grid
            best = max(float(s["val_avg_norm"]) for s in rows)
            first_best = next(float(s["coef"]) for s in rows if float(s["val_avg_norm"]) == best)
            assert chosen == first_best
        n = r["norms"]
        assert r["lines"]["alpha"] == pytest.approx(
            n["task_vector_sum"] / n["merged_task_vector"] / len(tasks), rel=1e-12
        )
        assert r["lines"]["lambdas"][0] == pytest.approx(r["lines"]["alpha"])
        assert r["lines"]["lambdas"][-1] == pytest.approx(r["lines"]["alpha"] + r["lines"]["beta"])
        for v in ("baseline", "lines"):
            acc, nrm = r[v]["test_acc"], r[v]["test_norm"]
            assert set(acc) == set(tasks)
            assert r[v]["test_avg_acc"] == pytest.approx(sum(acc.values()) / len(tasks))
            assert all(math.isfinite(x) for x in nrm.values())
    assert merge["methods"]["task_arithmetic"]["lines"]["alpha"] == pytest.approx(1 / 8, abs=1e-12)
    assert merge["methods"]["ties"]["lines"]["alpha"] > 1 / 8  # TIES trims: ‖τ_MTL‖ < ‖τ_sum‖

    # --- the report's numbers are the JSON's --------------------------------------------------
    metrics = json.loads((out / "report/metrics.json").read_text())
    report = (out / "report/report.md").read_text()
    # --- the schedule comparison ran on this suite (issue 14) and reached the report --------
    sch = json.loads((out / "schedules/schedules.json").read_text())
    assert set(sch["merging"]["task_arithmetic"]) == {"linear", "reversed"}
    assert set(sch["editing"]["MNIST"]) == {"linear", "reversed"}
    assert "Is linear layer scaling optimal?" in report and "schedules" in metrics
    # --- the learned baselines ran on this suite (issue 17) and reached the report ----------
    lrn = json.loads((out / "learned/learned.json").read_text())
    assert set(lrn["methods"]) == {"lines", "fisher", "adamerging_task", "atlas", "ensemble"}
    assert lrn["methods"]["atlas"]["cost"]["backward"] > 0
    assert "## Learned baselines" in report and "learned" in metrics
    for name, r in merge["methods"].items():
        mm = metrics["merge"][name]
        assert mm["test_avg_acc"] == r["baseline"]["test_avg_acc"]
        assert mm["lines_test_avg_norm"] == r["lines"]["test_avg_norm"]
        assert mm["lines_alpha"] == r["lines"]["alpha"] and mm["lines_beta"] == r["lines"]["beta"]
        row = next(
            ln
            for ln in report.splitlines()
            if ln.startswith(f"| {name} | {r['baseline']['lambda']:g} |")
        )
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:4] == [
            _pct(r["baseline"]["test_avg_acc"]),
            _pct(r["baseline"]["test_avg_norm"]),
        ]
        assert cells[5:8] == [
            f"{r['lines']['beta']:g}",
            _pct(r["lines"]["test_avg_acc"]),
            _pct(r["lines"]["test_avg_norm"]),
        ]
        per_task = next(
            ln for ln in report.splitlines() if ln.startswith(f"| {name} | ") and "→" in ln
        )
        assert (
            f"{_pct(r['baseline']['test_acc']['MNIST'])} → {_pct(r['lines']['test_acc']['MNIST'])}"
            in per_task
        )
    for png in ("accuracy_vs_beta.png", "per_task_bars.png", "target_vs_control.png", "wiseft.png"):
        assert (out / "report" / png).stat().st_size > 1000
    assert res["metrics"] == metrics
    edit = json.loads((out / "edit/edit.json").read_text())
    assert set(edit["tasks"]) == {"MNIST", "SVHN"} and edit["gammas"] == [0.0, 0.5, 1.0]
    wiseft = json.loads((out / "wiseft/wiseft.json").read_text())
    assert len(wiseft["rows"]) == 2 * len(p["wiseft"]["gammas"])
    soups = json.loads((out / "soups/soups.json").read_text())
    assert soups["members"] == ["MNIST", *SOUP_SEEDS] and set(soups["soups"]) == {
        "uniform",
        "greedy",
    }

    # --- a DVC experiment of the clip/ pipeline ----------------------------------------------
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    revs = [r for b in json.loads(shown) for e in b.get("experiments") or [] for r in e["revs"]]
    exp = next(r for r in revs if r.get("name") == "t-clip")["data"]
    assert exp["params"]["clip/params.yaml"]["data"]["merge"]["betas"] == p["merge"]["betas"]
    assert (
        exp["metrics"]["clip/out/report/metrics.json"]["data"]["merge"]["ties"]["lines_beta"]
        == (merge["methods"]["ties"]["lines"]["beta"])
    )

    # --- MLflow: one run with the chosen coefficients and sha256s; one nested run per point ----
    prep = json.loads((clip / "ckpt/prepare.json").read_text())
    run, children = _mlflow(uri, "t-clip")
    pr, me = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["lines.kind"] == "clip"
    for name, r in merge["methods"].items():
        assert float(pr[f"{name}.alpha"]) == r["lines"]["alpha"]
        assert float(pr[f"{name}.beta"]) == r["lines"]["beta"]
        assert float(pr[f"{name}.lambda"]) == r["baseline"]["lambda"]
        for t in tasks:
            assert me[f"{name}.lines.test_acc.{t}"] == r["lines"]["test_acc"][t]
    for t in tasks:
        assert pr[f"sha256.finetuned.{t}"] == prep["finetuned"][t]["sha256"]
        assert pr[f"sha256.source.{t}"] == prep["finetuned"][t]["source"]["sha256"]
    assert pr["model"] == "tiny" and pr["block_policy"] == "reference"
    assert pr["common.data_root"] == str(bench.data_root)
    merge_points = [c for c in children if c.data.params.get("method")]
    assert len(merge_points) == len(sweep)
    lines_pt = next(
        c
        for c in merge_points
        if c.data.params["method"] == "ties" and c.data.params["variant"] == "lines"
    )
    assert float(lines_pt.data.params["alpha"]) == merge["methods"]["ties"]["lines"]["alpha"]
    assert float(lines_pt.data.params["beta"]) in p["merge"]["ties_betas"]
    assert json.loads(lines_pt.data.params["tasks"]) == tasks
    assert lines_pt.data.params["block_policy"] == "reference"
    assert {f"val_acc_{t}" for t in tasks} <= set(lines_pt.data.metrics)
    edit_points = [c for c in children if c.data.params.get("stage") == "edit"]
    assert len(edit_points) == 2 * 3
    assert {c.data.params["sha256.finetuned"] for c in edit_points} == {
        prep["finetuned"]["MNIST"]["sha256"],
        prep["finetuned"]["SVHN"]["sha256"],
    }
    wiseft_points = [c for c in children if c.data.params.get("stage") == "wiseft"]
    assert wiseft_points  # each tagged with the interpolated model and its checkpoint hash
    assert {c.data.params["model"] for c in wiseft_points} == {wiseft["model"]}
    assert {c.data.params["sha256.finetuned"] for c in wiseft_points} == {
        prep["finetuned"][wiseft["model"]]["sha256"]
    }
    assert any(c.data.params.get("stage") == "soups" for c in children)
    assert (
        me["edit/average_at_best.test_target_norm"] == edit["average_at_best"]["test_target_norm"]
    )

    # --- the FusionBench layout of the same weights gives the same merged results ------------
    _check_fusion_bench_same_results(bench, clip, tmp_path, monkeypatch)


def _check_fusion_bench_same_results(
    bench: Any, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prepare the FusionBench folders (HF CLIPModel pretrained, CLIPVisionModel fine-tuned
    without projection), then run the merge stage on them with the pipeline's own command line."""
    import yaml

    from lines.clip import stages as S
    from lines.io import load_state_dict

    fb = bench.fusion_bench
    ckpt2 = tmp_path / "ckpt-fusion-bench"
    S.run_prepare(
        fb["pretrained"],
        fb["text"],
        {k: v for k, v in fb.items() if k not in ("pretrained", "text")},
        ckpt2,
        model="tiny",
        hub_cache=str(tmp_path / "hub"),
        offline=True,
    )
    prep1 = json.loads((clip / "ckpt/prepare.json").read_text())
    prep2 = json.loads((ckpt2 / "prepare.json").read_text())
    assert prep2["finetuned"]["MNIST"]["filled"] == ["visual.proj"]
    assert prep2["text"]["model_id"] == prep1["text"]["model_id"]  # same text tower, same heads
    for rel in (
        "pretrained.safetensors",
        "finetuned/MNIST.safetensors",
        "finetuned/DTD.safetensors",
    ):
        a, b = load_state_dict(clip / "ckpt" / rel), load_state_dict(ckpt2 / rel)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), rel

    cmd = yaml.safe_load((clip / "dvc.lock").read_text())["stages"]["merge"]["cmd"]
    argv = shlex.split(cmd)[3:]  # after `python -m lines.clip.stages`
    i = argv.index("--ckpt")
    argv[i + 1] = str(ckpt2)
    argv[argv.index("--out") + 1] = str(tmp_path / "merge-fusion-bench")
    monkeypatch.chdir(clip)  # the image and head caches of the run above
    assert S.main(argv) == 0
    got = json.loads((tmp_path / "merge-fusion-bench/merge.json").read_text())
    want = json.loads((clip / "out/merge/merge.json").read_text())
    for name, r in want["methods"].items():
        g = got["methods"][name]
        for v in ("baseline", "lines"):
            assert g[v] == r[v], (name, v)
        assert g["norms"] == r["norms"]


# ----------------------------------------------------------------------------------------------
# Pieces of the stages, without DVC or Prefect


def test_lean_tower_is_open_clips_tower_bit_for_bit() -> None:
    import torch
    from fixtures_clip import VISION, openclip_state_dict

    from lines.clip.model import build_image_encoder
    from lines.clip.tower import build_vision_tower

    sd = openclip_state_dict(5)
    x = torch.randn(3, 3, VISION["image_size"], VISION["image_size"])
    for quick_gelu in (True, False):
        ref = build_image_encoder(sd, heads=VISION["heads"], quick_gelu=quick_gelu)
        lean = build_vision_tower(sd, heads=VISION["heads"], quick_gelu=quick_gelu)
        assert list(lean.state_dict()) == list(ref.state_dict())
        assert lean.image_size == ref.image_size
        with torch.no_grad():
            assert torch.equal(lean(x), ref(x))


def test_prepare_skips_unchanged_sources_and_drops_removed_ones(tmp_path: Path) -> None:
    import torch
    from fixtures_clip import openclip_state_dict

    from lines.clip.stages import run_prepare
    from lines.errors import LinesError

    full = openclip_state_dict(0)
    torch.save(full, tmp_path / "full.pt")
    for k in ("A", "B"):
        torch.save(
            {
                f"model.{n}": v + (0.01 if n.startswith("visual.conv1") else 0)
                for n, v in full.items()
            },
            tmp_path / f"{k}.pt",
        )
    src = {k: str(tmp_path / f"{k}.pt") for k in ("A", "B")}
    out = tmp_path / "ckpt"
    first = run_prepare(
        str(tmp_path / "full.pt"), "", src, out, hub_cache=str(tmp_path), offline=True
    )
    assert first["text"]["model_id"] and first["spec"]["layers"] == 2
    mtime = (out / "finetuned/A.safetensors").stat().st_mtime_ns
    again = run_prepare(
        str(tmp_path / "full.pt"), "", src, out, hub_cache=str(tmp_path), offline=True
    )
    assert again == first and (out / "finetuned/A.safetensors").stat().st_mtime_ns == mtime
    run_prepare(
        str(tmp_path / "full.pt"), "", {"A": src["A"]}, out, hub_cache=str(tmp_path), offline=True
    )
    assert sorted(p.name for p in (out / "finetuned").iterdir()) == ["A.json", "A.safetensors"]
    with pytest.raises(LinesError, match="patch 8 and width 64"):
        run_prepare(
            str(tmp_path / "full.pt"),
            "",
            src,
            out,
            model="ViT-B-32",
            hub_cache=str(tmp_path),
            offline=True,
        )


def test_stage_command_line_takes_dvc_unpacking() -> None:
    from lines.clip.stages import build_parser, parse_finetuned
    from lines.errors import LinesError

    assert parse_finetuned(
        ["A=x.pt"], ["--finetuned.B", "hf:o/r/f.pt", "--finetuned.C-seed1", "c"]
    ) == {
        "A": "x.pt",
        "B": "hf:o/r/f.pt",
        "C-seed1": "c",
    }
    for bad in (["--finetuned.B"], ["--other", "x"]):
        with pytest.raises(LinesError):
            parse_finetuned([], bad)
    # What DVC renders for an empty list is nothing: every list option defaults to empty.
    a = build_parser().parse_args(["edit", "--gammas", "0", "1", "--out", "o"])
    assert a.tasks == [] and a.edit_tasks == [] and a.tower == "lines"
