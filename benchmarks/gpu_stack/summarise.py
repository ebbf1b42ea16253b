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
    parents = [r for r in rows if r["parent"] is None]
    flows = {}
    for f in sorted(out.glob("flow_g*.json")):
        d = json.loads(f.read_text())
        flows[d["gpus"]] = d
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
                }
            )
            i += 1
        summary["pools"].append(
            {
                "gpus": g,
                "flow_rc": flows[g]["rc"],
                "flow_wall_s": flows[g]["flow_wall_s"],
                "mlflow_run": r["run_id"] if r else None,
                "mlflow_status": r["status"] if r else None,
                "phases": phases,
            }
        )
    one = next((p for p in summary["pools"] if p["gpus"] == 1), None)
    for p in summary["pools"]:
        if one and len(one["phases"]) == len(p["phases"]):
            p["speedup"] = [
                round(a["wall_s"] / b["wall_s"], 2)
                for a, b in zip(one["phases"], p["phases"], strict=True)
            ]
            p["speedup_flow"] = round(one["flow_wall_s"] / p["flow_wall_s"], 2)
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
        wall = flows.get(int(g), {}).get("flow_wall_s", "") if g.isdigit() else ""
        md.append(f"| {r['name']} | {r['status']} | {g} | {wall} | {ph} | {n} |")
    (out / "mlflow_runs.md").write_text("\n".join(md) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
