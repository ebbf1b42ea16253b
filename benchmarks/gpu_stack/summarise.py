"""Summarise a ``benchmarks/gpu_stack/run.sh`` output folder: the MLflow records of its flow runs
(read back from the tracking store, as a user would see them) and the fan-out speed-ups.

Writes ``OUT/mlflow_runs.json`` (every run of experiment ``lines-llm``, nested ones included:
name, status, params, metrics, tags), ``OUT/mlflow_runs.md`` (the parent runs rendered) and
``OUT/summary.json``: per pool size the flow's wall time, each fan-out phase's wall time (what
``flows._core`` measured around the phase: units started, run, recorded in DVC) and its speed-up
against the 1-GPU pool.

    python benchmarks/gpu_stack/summarise.py OUT TRACKING_URI
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def unit_spans(path: Path) -> dict[tuple[str, ...], dict[str, float]]:
    """Per foreach group (``llm/dvc.yaml:finetune``): from the first unit's start to the last
    unit's end (the fan-out itself, without the phase's serial upstream and DVC bookkeeping),
    the sum of the units' own times and the longest unit."""
    if not path.is_file():
        return {}
    groups: dict[tuple[str, ...], list[dict]] = {}
    for u in json.loads(path.read_text()):
        if "started" in u:
            groups.setdefault((u["unit"].split("@")[0],), []).append(u)
    return {
        g: {
            "units_span_s": round(
                max(u["started"] + u["seconds"] for u in us) - min(u["started"] for u in us), 1
            ),
            "units_sum_s": round(sum(u["seconds"] for u in us), 1),
            "unit_max_s": max(u["seconds"] for u in us),
        }
        for g, us in groups.items()
    }


def main() -> None:
    out, uri = Path(sys.argv[1]), sys.argv[2]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("lines-llm")
    runs = c.search_runs([exp.experiment_id], max_results=50000) if exp else []
    rows = [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "parent": r.data.tags.get("mlflow.parentRunId"),
            "params": r.data.params,
            "metrics": r.data.metrics,
            "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.log")},
        }
        for r in runs
    ]
    (out / "mlflow_runs.json").write_text(json.dumps(rows, indent=1, sort_keys=True))
    durations = {
        r.info.run_id: (r.info.end_time or 0) / 1e3 - r.info.start_time / 1e3 for r in runs
    }
    parents = [r for r in rows if r["parent"] is None]
    flows = {}
    for f in sorted(out.glob("flow_g*.json")):
        d = json.loads(f.read_text())
        flows[d["gpus"]] = d
    for r in parents:  # a pool whose `prefect deployment run --watch` was not timed
        g = r["name"].removeprefix("gpus")
        if g.isdigit() and int(g) not in flows and r["status"] == "FINISHED":
            flows[int(g)] = {"gpus": int(g), "rc": 0, "flow_wall_s": None}
    summary: dict = {"gpus": (out / "gpus.txt").read_text().strip().splitlines(), "pools": []}
    by_name = {r["name"]: r for r in parents}
    for g in sorted(flows):
        r = by_name.get(f"gpus{g}")
        m = r["metrics"] if r else {}
        phases = []
        i = 0
        while f"fan_out.phase{i}.wall_s" in m:
            phases.append(
                {
                    "groups": json.loads(r["params"].get(f"fan_out.phase{i}.groups", "[]")),
                    "units": int(m[f"fan_out.phase{i}.units"]),
                    "wall_s": m[f"fan_out.phase{i}.wall_s"],
                    **(
                        {"upstream_s": m[f"fan_out.phase{i}.upstream_s"]}
                        if f"fan_out.phase{i}.upstream_s" in m
                        else {}
                    ),
                }
            )
            i += 1
        spans = unit_spans(out / f"units_g{g}.json")
        for ph in phases:
            ph.update(spans.get(tuple(ph["groups"]), {}))
        summary["pools"].append(
            {
                "gpus": g,
                "flow_rc": flows[g]["rc"],
                "flow_wall_s": flows[g]["flow_wall_s"],
                "mlflow_run": r["run_id"] if r else None,
                "mlflow_status": r["status"] if r else None,
                "mlflow_run_s": round(durations[r["run_id"]], 1) if r else None,
                "phases": phases,
            }
        )
    one = next((p for p in summary["pools"] if p["gpus"] == 1), None)
    for p in summary["pools"]:
        if one and len(one["phases"]) == len(p["phases"]):
            pairs = list(zip(one["phases"], p["phases"], strict=True))
            p["speedup_phase_wall"] = [round(a["wall_s"] / b["wall_s"], 2) for a, b in pairs]
            p["speedup_units_span"] = [
                round(a["units_span_s"] / b["units_span_s"], 2)
                for a, b in pairs
                if "units_span_s" in a and "units_span_s" in b
            ]
            if one["mlflow_run_s"] and p["mlflow_run_s"]:
                p["speedup_mlflow_run"] = round(one["mlflow_run_s"] / p["mlflow_run_s"], 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = ["| run | status | GPUs | flow wall s | fan-out phases (units: wall s) | nested runs |"]
    md.append("|---|---|---|---|---|---|")
    for r in parents:
        n = sum(1 for x in rows if x["parent"] == r["run_id"])
        g = r["name"].removeprefix("gpus")
        ph = "; ".join(
            f"{p['units']}: {p['wall_s']:.1f}"
            for p in next((q["phases"] for q in summary["pools"] if str(q["gpus"]) == g), [])
        )
        wall = (flows.get(int(g), {}).get("flow_wall_s") or "") if g.isdigit() else ""
        md.append(f"| {r['name']} | {r['status']} | {g} | {wall} | {ph} | {n} |")
    (out / "mlflow_runs.md").write_text("\n".join(md) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
