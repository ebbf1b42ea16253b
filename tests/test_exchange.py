"""Hosts that share no filesystem (tasks/exchange.py): units in clones of their own exchange inputs
and outputs only through a DVC remote (a local folder stands in for S3/GCS), on a copy of the
project whose stages are fast fakes. The Prefect-level version (two workers, artifacts, retry of a
killed unit) is in tests/test_flows.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("dvc")

from fake_pipeline import make_fake_project  # noqa: E402

from orchestration.proc import CommandError  # noqa: E402
from tasks.exchange import push_upstream, restore_from_remote, run_in_clone  # noqa: E402


def dvc(ws: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws, capture_output=True, text=True, check=True
    ).stdout


def remote_bytes(remote: Path) -> list[bytes]:
    return [p.read_bytes() for p in remote.rglob("*") if p.is_file()]


@pytest.fixture
def parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    ws = make_fake_project(tmp_path / "parent")
    dvc(ws, "repro", "heads")
    return ws


def unit(ws: Path, remote: Path, stage: str) -> dict:
    rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True, check=True
    ).stdout.strip()
    return run_in_clone(
        name=stage,
        repo=str(ws),
        rev=rev,
        remote_url=str(remote),
        params={"params.yaml": (ws / "params.yaml").read_text()},
        stage=stage,
    )


def test_units_on_two_hosts_exchange_through_the_remote_only(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "remote"
    push_upstream.fn(parent, str(remote), ["heads"])
    reports = {}
    for host, stage in (("hostA", "finetune@trec"), ("hostB", "finetune@bbc_news")):
        monkeypatch.setenv("LINES_UNIT_SCRATCH", str(tmp_path / host))
        reports[stage] = unit(parent, remote, stage)
        # the upstream came from the remote's run cache, not recomputed in the clone
        assert reports[stage]["restored_upstream"] == ["fetch", "heads"]
        assert Path(reports[stage]["clone"]).parent == tmp_path / host
        assert not Path(reports[stage]["clone"]).exists()  # scratch clone removed
    # nothing was written into the parent by the units
    assert not (parent / "out" / "finetune").exists()
    restored = restore_from_remote.fn(parent, ["finetune@trec", "finetune@bbc_news"])
    assert restored == ["finetune@trec", "finetune@bbc_news"]
    assert (parent / "out/finetune/trec/model.safetensors").read_bytes() == b"trec 0 0.0003"
    assert (parent / "out/finetune/bbc_news/model.safetensors").read_bytes() == b"bbc_news 0 0.0003"
    assert "finetune@trec" in (parent / "dvc.lock").read_text()
    assert "up to date" in dvc(parent, "status", "finetune@trec", "finetune@bbc_news")


def test_a_killed_unit_pushes_nothing_and_keeps_its_clone(
    parent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "remote"
    push_upstream.fn(parent, str(remote), ["heads"])
    before = remote_bytes(remote)
    monkeypatch.setenv("LINES_UNIT_SCRATCH", str(tmp_path / "hostA"))
    monkeypatch.setenv("FAKE_STAGE_KILL_ONCE", str(tmp_path / "killed"))
    with pytest.raises(CommandError, match="finetune@trec") as e:
        unit(parent, remote, "finetune@trec")
    assert e.value.returncode != 0
    after = remote_bytes(remote)
    assert sorted(after) == sorted(before)  # no output, no run-cache entry
    assert not any(b"half-written" in b for b in after)
    kept = [p for p in (tmp_path / "hostA").iterdir() if p.is_dir()]
    assert len(kept) == 1 and (kept[0] / "out/finetune/trec/model.safetensors").exists()
    # the second attempt (Prefect's retry) completes and the parent gets the full output
    rep = unit(parent, remote, "finetune@trec")
    assert rep["restored_upstream"] == ["fetch", "heads"]
    assert restore_from_remote.fn(parent, ["finetune@trec"]) == ["finetune@trec"]
    assert (parent / "out/finetune/trec/model.safetensors").read_bytes() == b"trec 0 0.0003"


def test_a_stage_missing_from_the_remote_is_recomputed_with_a_warning(
    parent: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    push_upstream.fn(parent, str(remote), ["heads"])
    assert restore_from_remote.fn(parent, ["finetune@sms_spam"]) == []
    assert (parent / "out/finetune/sms_spam/model.safetensors").exists()
