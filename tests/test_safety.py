"""The tool never destroys data (issue: "Never destroy data"): what ``--overwrite`` may replace,
outputs against inputs, crash consistency under ``kill -9``, stale temporaries, two writers, OS
errors, malformed headers and argument errors. Every case is built in a temp folder; the folder
is snapshotted (sha256 of every file) before and after each refusal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CkptSet, snapshot, write_family
from test_cli import assert_refused, merge_args

from lines.io import load_state_dict, open_checkpoint, save_state_dict
from lines.io.outputs import OutputLock, header_metadata
from lines.io.tempfiles import HOST_TAG

PROGRESS_OFF = "--no-progress"


def hf_folder(root: Path, cs: CkptSet, name: str = "pre") -> Path:
    """A Hugging Face-style folder holding the pretrained weights and a config."""
    d = root / name
    d.mkdir()
    shutil.copy(cs.pretrained, d / "model.safetensors")
    (d / "config.json").write_text('{"model_type": "bert"}')
    return d


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------------------------
# 1. --overwrite replaces only an earlier output of lines


def _foreign_file(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    out = tmp / "m.safetensors"
    out.write_bytes(b"precious bytes")
    return out, ["m.safetensors", "was not written by lines"]


def _foreign_safetensors(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    out = tmp / "m.safetensors"  # a real checkpoint, but the user's own
    save_state_dict(out, cs.base, {"producer": "someone else"})
    return out, ["was not written by lines"]


def _foreign_manifest(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    (tmp / "m.json").write_text('{"my": "notes"}')
    return tmp / "m.safetensors", ["m.json", "output manifest exists", "not written by lines"]


def _project_folder(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    d = tmp / "project"
    d.mkdir()
    (d / "train.py").write_text("print('my code')\n")
    return d, ["project", "holds no lines manifest"]


def _lines_folder_with_foreign_file(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    d = tmp / "merged"
    d.mkdir()
    (d / "lines_manifest.json").write_text(json.dumps({"lines_version": "0", "output": {}}))
    (d / "model.safetensors").write_bytes(b"x")
    (d / "keep.txt").write_text("mine")
    return d, ["holds keep.txt, which lines did not write"]


def _lines_folder_with_subfolder(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    d = tmp / "merged"
    d.mkdir()
    (d / "lines_manifest.json").write_text(json.dumps({"lines_version": "0", "output": {}}))
    (d / "runs").mkdir()
    (d / "runs" / "log.txt").write_text("mine")
    return d, ["holds runs, not a file"]


def _folder_named_safetensors(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    d = tmp / "x.safetensors"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    return d, ["x.safetensors", "is a folder"]


def _file_at_folder_output(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    f = tmp / "notes"
    f.write_text("mine")
    return f, ["notes", "is a regular file, not a folder of lines"]


def _symlink_file(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    real = tmp / "real.safetensors"
    real.write_bytes(b"mine")
    (tmp / "m.safetensors").symlink_to(real)
    return tmp / "m.safetensors", ["is a symbolic link"]


def _symlink_to_lines_folder(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    real = tmp / "real"
    real.mkdir()
    (real / "lines_manifest.json").write_text(json.dumps({"lines_version": "0", "output": {}}))
    (tmp / "link").symlink_to(real)
    return tmp / "link", ["is a symbolic link"]


def _fifo(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe", ["is a FIFO"]


def _device(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    # A character device like /dev/null, made inside the temp folder (needs root).
    try:
        os.mknod(tmp / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    return tmp / "null", ["is a device"]


def _ancestor_of_inputs(tmp: Path, cs: CkptSet) -> tuple[Path, list[str]]:
    return cs.root, ["contains the input"]


OVERWRITE_REFUSALS = {
    "foreign_file": _foreign_file,
    "foreign_safetensors": _foreign_safetensors,
    "foreign_manifest": _foreign_manifest,
    "project_folder": _project_folder,
    "lines_folder_with_foreign_file": _lines_folder_with_foreign_file,
    "lines_folder_with_subfolder": _lines_folder_with_subfolder,
    "folder_named_safetensors": _folder_named_safetensors,
    "file_at_folder_output": _file_at_folder_output,
    "symlink_file": _symlink_file,
    "symlink_to_lines_folder": _symlink_to_lines_folder,
    "fifo": _fifo,
    "device": _device,
    "ancestor_of_inputs": _ancestor_of_inputs,
}


@pytest.mark.parametrize("case", OVERWRITE_REFUSALS)
@pytest.mark.parametrize("overwrite", [True, False])
def test_overwrite_never_replaces_what_lines_did_not_write(
    bert_ckpts, tmp_path, run_cli, case, overwrite
) -> None:
    out, needles = OVERWRITE_REFUSALS[case](tmp_path, bert_ckpts)
    before = snapshot(tmp_path)
    extra = ["--overwrite"] if overwrite else []
    r = run_cli(merge_args(bert_ckpts, out, "task_arithmetic", *extra))
    assert_refused(r, *needles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out", [".", "..", "sub/..", "/"])
def test_working_directory_and_its_parents_are_refused(
    bert_ckpts, tmp_path, run_cli, monkeypatch, out
) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    r = run_cli(merge_args(bert_ckpts, out, "task_arithmetic", "--overwrite"))
    needle = "file-system root" if out == "/" else "working directory or one of its parents"
    assert_refused(r, needle)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_an_earlier_folder_output_with_its_config(tmp_path, run_cli) -> None:
    """A folder output holds config files copied from the pretrained folder: --overwrite may
    replace it (those files are the tool's), and the result is the new merge."""
    cs = write_family(tmp_path / "c", n=2)
    pre = hf_folder(tmp_path, cs)
    out = tmp_path / "merged"
    args = ["merge", "--pretrained", pre, "--finetuned", *cs.finetuned, "--out", out, PROGRESS_OFF]
    assert run_cli([*args, "--method", "ties"]).code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "lines_manifest.json",
        "model.safetensors",
    ]
    man = json.loads((out / "lines_manifest.json").read_text())
    assert man["output"]["files"] == ["config.json", "lines_manifest.json", "model.safetensors"]
    r = run_cli([*args, "--method", "task_arithmetic", "--overwrite"])
    assert r.code == 0, r.err
    man = json.loads((out / "lines_manifest.json").read_text())
    assert man["method"] == "task_arithmetic"
    assert hidden(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# 2. An output may not be, contain, or live inside any input


@pytest.mark.parametrize("sub", ["merge", "edit", "interpolate", "apply"])
@pytest.mark.parametrize("where", ["weights_of_input", "inside_input", "via_symlink", "hardlink"])
def test_output_inside_an_input_is_refused(tmp_path, run_cli, sub, where) -> None:
    cs = write_family(tmp_path / "c", n=2)
    pre = hf_folder(tmp_path, cs)
    tau = tmp_path / "tau.safetensors"
    assert (
        run_cli(
            ["merge", "--pretrained", pre, "--finetuned", *cs.finetuned, "--method", "ties"]
            + ["--lines-beta", "0.5", "--save-task-vector", tau, "--out", tmp_path / "m0"]
            + [PROGRESS_OFF]
        ).code
        == 0
    )
    if where == "weights_of_input":
        out, needle = pre / "model.safetensors", "one of the inputs"
    elif where == "inside_input":
        out, needle = pre / "merged.safetensors", "lies inside the input folder"
    elif where == "via_symlink":
        (tmp_path / "link").symlink_to(pre)
        out, needle = tmp_path / "link" / "merged.safetensors", "lies inside the input folder"
    else:  # a hard link to the fine-tuned (or task vector) file: the same inode
        src = tau if sub == "apply" else cs.finetuned[0]
        out = tmp_path / "hl.safetensors"
        os.link(src, out)
        needle = "one of the inputs"
    head = {
        "merge": ["merge", "--pretrained", pre, "--finetuned", *cs.finetuned, "--method", "ties"],
        "edit": ["edit", "--pretrained", pre, "--finetuned", cs.finetuned[0], "--gamma", "0.5"],
        "interpolate": ["interpolate", "--pretrained", pre, "--finetuned", cs.finetuned[0]]
        + ["--gamma", "0.5"],
        "apply": ["apply", "--pretrained", pre, "--task-vector", tau, "--lines-beta", "0.5"],
    }[sub]
    before = snapshot(tmp_path)
    r = run_cli([*head, "--out", out, "--overwrite", PROGRESS_OFF])
    assert_refused(r, needle)
    assert snapshot(tmp_path) == before


def test_save_task_vector_inside_an_input_is_refused(tmp_path, run_cli) -> None:
    cs = write_family(tmp_path / "c", n=2)
    pre = hf_folder(tmp_path, cs)
    before = snapshot(tmp_path)
    r = run_cli(
        ["merge", "--pretrained", pre, "--finetuned", *cs.finetuned, "--method", "ties"]
        + ["--save-task-vector", pre / "tau.safetensors", "--out", tmp_path / "m.safetensors"]
        + ["--overwrite", PROGRESS_OFF]
    )
    assert_refused(r, "lies inside the input folder")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# 3-4. Crash consistency: kill -9 at several moments, then a rerun that must succeed

_KILLER = textwrap.dedent(
    """
    import importlib, os, signal, sys
    mod_name, attr, nth, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    owner = importlib.import_module(mod_name)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    orig = getattr(owner, name)
    calls = [0]

    def hook(*a, **k):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*a, **k)

    setattr(owner, name, hook)
    from lines.cli import main
    sys.exit(main(argv))
    """
)


def run_killed(argv: list, where: tuple[str, str, int], cwd: Path) -> int:
    """Run ``lines ARGV`` in a fresh process that SIGKILLs itself on the n-th call of a
    function (a deterministic ``kill -9`` at that moment); returns the exit code."""
    mod, attr, nth = where
    r = subprocess.run(
        [sys.executable, "-c", _KILLER, mod, attr, str(nth), *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.returncode


# Moments of a merge, in order: mid-way through the weights; weights complete in the staging
# folder, manifest being written; (file output) manifest published, weights not yet; everything
# published, just before the final fsync.
MOMENTS = {
    "writing_weights": ("lines.io", "SafetensorsWriter.write_parts", 9),
    "writing_manifest": ("lines.io.outputs", "write_json_durable", 1),
    "between_renames": ("lines.io.outputs", "_rename_noreplace", 2),
    "published": ("lines.io.outputs", "_fsync_dir", 1),
}


@pytest.fixture(scope="module")
def eight(tmp_path_factory) -> CkptSet:
    return write_family(tmp_path_factory.mktemp("eight") / "ckpt", n=8)


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize(
    "method", [["task_arithmetic", "--lines-beta", "0.5"], ["ties", "--lines-beta", "0.5"]]
)
def test_kill_during_merge_then_rerun_is_byte_identical(
    eight, tmp_path, run_cli, moment, method
) -> None:
    out = tmp_path / "m.safetensors"
    args = merge_args(eight, out, *method)
    assert run_cli(args).code == 0
    reference = out.read_bytes()
    ref_man = json.loads(out.with_suffix(".json").read_text())
    out.unlink()
    out.with_suffix(".json").unlink()

    code = run_killed(args, MOMENTS[moment], tmp_path)
    assert code == -signal.SIGKILL
    # a reader never sees weights without the manifest that describes them
    if out.exists():
        man = json.loads(out.with_suffix(".json").read_text())
        assert header_metadata(out)["lines_output_id"] == man["output"]["id"]

    r = run_cli(args)
    if moment == "published":  # the run had finished its work: the output is complete
        assert_refused(r, "output exists")
    else:
        assert r.code == 0, r.err
        assert "removed stale temporary" in r.err
    assert out.read_bytes() == reference
    man = json.loads(out.with_suffix(".json").read_text())
    assert man["output"]["sha256"] == ref_man["output"]["sha256"]
    assert hidden(tmp_path) == []


FOLDER_MOMENTS = {
    "writing_weights": ("lines.io", "SafetensorsWriter.write_parts", 9),
    "writing_manifest": ("lines.io.outputs", "write_json_durable", 1),
    "before_rename": ("lines.io.outputs", "_rename_noreplace", 1),
}


@pytest.mark.parametrize("moment", FOLDER_MOMENTS)
def test_kill_during_folder_merge_then_rerun(eight, tmp_path, run_cli, moment) -> None:
    where = FOLDER_MOMENTS[moment]
    out = tmp_path / "merged"
    args = merge_args(eight, out, "ties", "--lines-beta", "0.5")
    assert run_cli(args).code == 0
    reference = (out / "model.safetensors").read_bytes()
    shutil.rmtree(out)
    assert run_killed(args, where, tmp_path) == -signal.SIGKILL
    assert not out.exists()  # a folder output appears whole or not at all
    r = run_cli(args)
    assert r.code == 0, r.err
    assert "removed stale temporary" in r.err
    assert (out / "model.safetensors").read_bytes() == reference
    assert hidden(tmp_path) == []


def test_kill_during_overwrite_then_rerun_without_overwrite(eight, tmp_path, run_cli) -> None:
    """Killed between the manifest and the weights while replacing an earlier output: the old
    weights and the new manifest disagree (their output ids differ), so the rerun knows the
    output is incomplete and replaces it without --overwrite."""
    out = tmp_path / "m.safetensors"
    new = merge_args(eight, out, "task_arithmetic", "--lines-beta", "0.5")
    assert run_cli(new).code == 0
    reference = out.read_bytes()
    assert run_cli(merge_args(eight, out, "ties", "--overwrite")).code == 0
    code = run_killed([*new, "--overwrite"], ("lines.io.outputs", "_replace", 2), tmp_path)
    assert code == -signal.SIGKILL
    man = json.loads(out.with_suffix(".json").read_text())
    assert man["method"] == "task_arithmetic"
    assert header_metadata(out)["lines_output_id"] != man["output"]["id"]
    r = run_cli(new)
    assert r.code == 0, r.err
    assert "replacing an incomplete output" in r.err
    assert out.read_bytes() == reference
    assert hidden(tmp_path) == []


def test_kill_with_save_task_vector_then_rerun(eight, tmp_path, run_cli) -> None:
    """The saved task vector (weights + manifest) is published before the merge; killed in
    between, it is debris (its header names a merge that was never published) and the rerun
    replaces it without --overwrite."""
    out, tv = tmp_path / "m.safetensors", tmp_path / "tau.safetensors"
    args = merge_args(eight, out, "ties", "--lines-beta", "0.5", "--save-task-vector", tv)
    assert run_cli(args).code == 0
    ref_out, ref_tv = out.read_bytes(), tv.read_bytes()
    for p in (out, out.with_suffix(".json"), tv, tv.with_suffix(".json")):
        p.unlink()
    # renames: τ manifest, τ weights, merge manifest (killed before it), merge weights
    assert run_killed(args, ("lines.io.outputs", "_rename_noreplace", 3), tmp_path) == -9
    assert tv.exists() and tv.with_suffix(".json").exists() and not out.exists()
    assert json.loads(tv.with_suffix(".json").read_text())["kind"] == "task_vector"
    r = run_cli(args)
    assert r.code == 0, r.err
    assert (out.read_bytes(), tv.read_bytes()) == (ref_out, ref_tv)
    assert hidden(tmp_path) == []


def test_refused_run_leaves_nothing(bert_ckpts, tmp_path, run_cli) -> None:
    """Pretrained given as the fine-tuned model with TIES + LiNeS: τ_MTL = 0, so the automatic α
    is undefined; the refusal must leave no temporary (the scratch τ file included)."""
    cs = bert_ckpts
    before = snapshot(tmp_path)
    r = run_cli(
        ["merge", "--pretrained", cs.pretrained, "--finetuned", cs.pretrained, cs.pretrained]
        + ["--method", "ties", "--lines-beta", "0.5", "--allow-unusual"]
        + ["--out", tmp_path / "m.safetensors", PROGRESS_OFF]
    )
    assert_refused(r, "merged task vector is zero")
    assert snapshot(tmp_path) == before


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_processes_only_are_removed(bert_ckpts, tmp_path, run_cli):
    out = tmp_path / "m.safetensors"
    dead = tmp_path / f".m.safetensors.lines-{HOST_TAG}-{_dead_pid()}-ab12.tmp"
    dead.mkdir()
    (dead / "m.safetensors").write_bytes(b"half")
    alive = tmp_path / f".m.safetensors.lines-{HOST_TAG}-{os.getpid()}-cd34.tmp"
    alive.write_bytes(b"a live writer's")
    other_host = tmp_path / f".m.safetensors.lines-00000000-{_dead_pid()}-ef56.tmp"
    other_host.write_bytes(b"another machine's, on a shared disk")
    other_name = tmp_path / f".other.safetensors.lines-{HOST_TAG}-{_dead_pid()}-ab12.tmp"
    other_name.write_bytes(b"another output's")
    r = run_cli(merge_args(bert_ckpts, out))
    assert r.code == 0, r.err
    assert f"removed stale temporary {dead}" in r.err
    assert not dead.exists()
    assert alive.exists() and other_host.exists() and other_name.exists()


# ----------------------------------------------------------------------------------------------
# 5. Two writers


def test_second_writer_is_refused_while_the_first_holds_the_output(bert_ckpts, tmp_path, run_cli):
    out = tmp_path / "m.safetensors"
    lock = OutputLock(out, out)
    lock.acquire()
    try:
        before = snapshot(tmp_path)
        r = run_cli(merge_args(bert_ckpts, out))
        assert_refused(r, str(out), "another lines process is writing this output")
        assert snapshot(tmp_path) == before
    finally:
        lock.release()
    assert run_cli(merge_args(bert_ckpts, out)).code == 0
    assert hidden(tmp_path) == []


_SLOW = textwrap.dedent(
    """
    import sys, time
    import lines.io as io
    orig = io.SafetensorsWriter.write_parts
    def slow(*a, **k):
        if not getattr(slow, "done", False):
            slow.done = True
            print("WRITING", flush=True)
            time.sleep(float(sys.argv[1]))
        return orig(*a, **k)
    io.SafetensorsWriter.write_parts = slow
    from lines.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_two_processes_writing_one_output(eight, tmp_path) -> None:
    out = tmp_path / "m.safetensors"
    args = [str(a) for a in merge_args(eight, out, "ties")]
    first = subprocess.Popen(
        [sys.executable, "-c", _SLOW, "8", *args], stdout=subprocess.PIPE, text=True
    )
    assert first.stdout.readline().strip() == "WRITING"
    second = subprocess.run(
        [sys.executable, "-m", "lines.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"lines: error: {out}: another lines process is writing this output now "
        f"(lock .m.safetensors.lines.lock); wait for it or choose another --out"
    ]
    assert first.wait(timeout=120) == 0
    assert load_state_dict(out).keys() == eight.base.keys()
    assert hidden(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# 6. OS errors: one line naming the path and the error, exit 2, nothing partial


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_tmpfs(tmp_path):
    if not _can_mount():
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, run_cli, small_tmpfs) -> None:
    cs = write_family(tmp_path / "big", n=2, hidden=64, intermediate=256, vocab=512)
    assert cs.pretrained.stat().st_size > 200_000  # far more than the 64 KiB disk holds
    out = small_tmpfs / "m.safetensors"
    r = run_cli(merge_args(cs, out))
    assert_refused(r, "No space left on device")
    assert list(small_tmpfs.iterdir()) == []


def test_read_only_output_folder(bert_ckpts, tmp_path, run_cli, small_tmpfs) -> None:
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)]).returncode == 0
    r = run_cli(merge_args(bert_ckpts, small_tmpfs / "m.safetensors"))
    assert_refused(
        r, str(small_tmpfs), "cannot write in the output folder", "Read-only file system"
    )


def test_permission_denied_output_folder(bert_ckpts, tmp_path) -> None:
    """A folder the user may not write to. As root, run without the capability that lets root
    ignore file permissions (setpriv)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cmd = [
        sys.executable,
        "-m",
        "lines.cli",
        *map(str, merge_args(bert_ckpts, ro / "m.safetensors")),
    ]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv(1) to drop CAP_DAC_OVERRIDE")
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"lines: error: {ro}: cannot write in the output folder (Permission denied)"
    ]
    assert list(ro.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 7. Malformed safetensors headers


def _rewrite_header(src: Path, dst: Path, change) -> Path:
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    tail = change(header, raw[8 + n :])
    data = raw[8 + n :] if tail is None else tail
    h = json.dumps(header).encode()
    dst.write_bytes(len(h).to_bytes(8, "little") + h + data)
    return dst


def _overlap(h, data):  # two tensors of one shape read the same bytes
    h["encoder.layer.1.output.dense.bias"]["data_offsets"] = h["encoder.layer.0.output.dense.bias"][
        "data_offsets"
    ]


def _negative_shape(h, data):
    h["pooler.dense.bias"]["shape"] = [-8]


def _float_shape(h, data):
    h["pooler.dense.bias"]["shape"] = [8.0]


def _metadata_not_strings(h, data):
    h["__metadata__"] = {"format": "pt", "epoch": 3}


def _metadata_not_a_map(h, data):
    h["__metadata__"] = ["pt"]


def _trailing_bytes(h, data):
    return data + b"\0" * 16


def _unknown_dtype(h, data):
    h["pooler.dense.bias"]["dtype"] = "F128"


MALFORMED = {
    "overlapping_offsets": (_overlap, ["overlaps"]),
    "negative_shape": (_negative_shape, ["'pooler.dense.bias'", "shape [-8]"]),
    "float_shape": (_float_shape, ["'pooler.dense.bias'", "shape [8.0]"]),
    "metadata_not_strings": (_metadata_not_strings, ["__metadata__ is not a map of strings"]),
    "metadata_not_a_map": (_metadata_not_a_map, ["__metadata__ is not a map of strings"]),
    "trailing_bytes": (_trailing_bytes, ["16 bytes after the last tensor"]),
    "unknown_dtype": (_unknown_dtype, ["unknown dtype 'F128'"]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_header_is_refused(bert_ckpts, tmp_path, run_cli, case) -> None:
    change, needles = MALFORMED[case]
    bad = _rewrite_header(bert_ckpts.finetuned[0], bert_ckpts.root / "bad.safetensors", change)
    cs = CkptSet(bert_ckpts.root, bert_ckpts.pretrained, [bad, *bert_ckpts.finetuned[1:]], {}, [])
    before = snapshot(tmp_path)
    r = run_cli(merge_args(cs, tmp_path / "m.safetensors"))
    assert_refused(r, str(bad), *needles)
    assert snapshot(tmp_path) == before


def test_duplicate_header_keys_are_refused(tmp_path) -> None:
    h = (
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    )
    p = tmp_path / "dup.safetensors"
    p.write_bytes(len(h).to_bytes(8, "little") + h + b"\0" * 8)
    from lines.errors import LinesError

    with pytest.raises(LinesError, match="key 'a' appears twice"):
        open_checkpoint(p)


def test_zero_size_tensors_share_an_offset(tmp_path) -> None:
    """What the safetensors library writes for empty tensors must still be read."""
    import safetensors.torch

    p = tmp_path / "empty.safetensors"
    sd = {"a": torch.zeros(0), "b": torch.ones(2), "c": torch.zeros(0, 3)}
    safetensors.torch.save_file(sd, str(p))
    got = load_state_dict(p)
    assert got["b"].tolist() == [1.0, 1.0] and got["c"].shape == (0, 3)


# ----------------------------------------------------------------------------------------------
# 8. Argument errors: one line; likely mistakes refused unless --allow-unusual


def test_usage_errors_are_one_line(bert_ckpts, tmp_path, run_cli) -> None:
    r = run_cli(merge_args(bert_ckpts, tmp_path / "m.safetensors", "ties", "--lines-beta", "abc"))
    assert_refused(r, "argument --lines-beta: invalid float value: 'abc'")
    r = run_cli(["merge", *bert_ckpts.args(), "--method", "ties"])
    assert_refused(r, "the following arguments are required: --out")
    r = run_cli(["frobnicate"])
    assert_refused(r, "invalid choice: 'frobnicate'")
    assert list(tmp_path.glob("m*")) == []


def _same_path_twice(cs: CkptSet, tmp: Path) -> list:
    return [cs.finetuned[0], cs.finetuned[0]]


def _same_file_other_spelling(cs: CkptSet, tmp: Path) -> list:
    return [cs.finetuned[0], cs.root / ".." / cs.root.name / cs.finetuned[0].name]


def _hard_link_twice(cs: CkptSet, tmp: Path) -> list:
    os.link(cs.finetuned[0], tmp / "hl.safetensors")
    return [cs.finetuned[0], tmp / "hl.safetensors"]


def _pretrained_as_finetuned(cs: CkptSet, tmp: Path) -> list:
    return [cs.pretrained, cs.finetuned[0]]


DUPLICATES = {
    "same_path_twice": (_same_path_twice, "the same fine-tuned checkpoint is given twice"),
    "other_spelling": (_same_file_other_spelling, "the same fine-tuned checkpoint is given twice"),
    "hard_link": (_hard_link_twice, "the same fine-tuned checkpoint is given twice"),
    "pretrained_as_finetuned": (_pretrained_as_finetuned, "pretrained checkpoint is also given"),
}


@pytest.mark.parametrize("case", DUPLICATES)
def test_repeated_inputs_need_allow_unusual(bert_ckpts, tmp_path, run_cli, case) -> None:
    make, needle = DUPLICATES[case]
    fts = make(bert_ckpts, tmp_path)
    out = tmp_path / "m.safetensors"
    args = ["merge", "--pretrained", bert_ckpts.pretrained, "--finetuned", *fts]
    args += ["--method", "task_arithmetic", "--out", out, PROGRESS_OFF]
    before = snapshot(tmp_path)
    assert_refused(run_cli(args), needle, "--allow-unusual")
    assert snapshot(tmp_path) == before
    r = run_cli([*args, "--allow-unusual"])
    assert r.code == 0, r.err


def test_edit_with_pretrained_as_finetuned_is_refused(bert_ckpts, tmp_path, run_cli) -> None:
    cs = bert_ckpts
    r = run_cli(
        ["edit", "--pretrained", cs.pretrained, "--finetuned", cs.pretrained, "--gamma", "0.5"]
        + ["--out", tmp_path / "e.safetensors", PROGRESS_OFF]
    )
    assert_refused(r, "pretrained checkpoint is also given")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (
            ["--method", "ties", "--lines-beta", "0.5", "--lines-alpha", "-0.1"],
            "--lines-alpha -0.1",
        ),
        (
            ["--method", "ties", "--pre-lines-alpha", "-1", "--pre-lines-beta", "0.5"],
            "--pre-lines-alpha -1.0",
        ),
        (["--method", "consensus", "--k", "0"], "--k 0"),
    ],
)
def test_unusual_values_need_allow_unusual(bert_ckpts, tmp_path, run_cli, extra, needle) -> None:
    out = tmp_path / "m.safetensors"
    args = ["merge", *bert_ckpts.args(), *extra, "--out", out, PROGRESS_OFF]
    before = snapshot(tmp_path)
    assert_refused(run_cli(args), needle, "--allow-unusual")
    assert snapshot(tmp_path) == before
    r = run_cli([*args, "--allow-unusual"])
    assert r.code == 0, r.err
    assert json.loads(out.with_suffix(".json").read_text())["output"]["id"]
