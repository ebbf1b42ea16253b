"""Where CLIP checkpoints come from, and the community layouts they come in.

References
----------
- ``openclip:<model>:<pretrained_tag>``: an open_clip pretrained tag, e.g. ``openclip:ViT-B-32:openai``
  (fetched from the Hugging Face repo open_clip's table names, or its URL).
- ``hf:<owner>/<repo>[@<revision>][/<file>]``: one file of a Hub repo
  (``hf:nik-dim/tall_masks@main/single_task/ViT-B-32/MNISTVal/nonlinear_finetuned.pt``) or a whole
  model folder (``hf:tanganke/clip-vit-base-patch32_sun397@main``). Pin a revision (a commit hash)
  for reproducible runs; the manifest records the commit actually used.
- anything else (or ``path:<p>``): a local file or folder.

Online, :func:`fetch` downloads into ``cache_dir`` (the Hugging Face cache layout, so
``hf download ... --cache-dir`` fills the same place). Offline (``HF_HUB_OFFLINE=1`` or
``offline=True``) or when the Hub does not answer within ``timeout`` seconds it fails at once with
one line saying what to download and where to put it; a file already in the cache is used.

Layouts (all brought to one canonical form by :func:`prepare_checkpoint`)
--------------------------------------------------------------------------
- tall_masks (``nik-dim/tall_masks``): ``torch.save`` of an open_clip CLIP state dict with a
  ``model.`` prefix and leftover text-tower keys; read with ``weights_only=True``.
- open_clip: ``open_clip_model.safetensors`` / ``.bin`` (``visual.*`` + text keys).
- FusionBench (``tanganke/clip-vit-*_<task>``): Hugging Face ``CLIPVisionModel`` folders,
  without ``visual_projection`` (FusionBench keeps the pretrained projection): the projection is
  filled from the pretrained model (``projection_from``), so its task vector is zero.
- Hugging Face ``CLIPModel`` folders (``openai/clip-vit-base-patch32``): both towers.
- task_vectors release: whole pickled ``ImageEncoder`` modules (open_clip 2.0.2). Never loaded
  implicitly; :func:`lines.clip.pickled.convert_pickled_module` converts one, once, when the caller opts in.

The canonical form is a safetensors file of the image tower under ``visual.*`` open_clip keys
(what ``lines.engine`` merges; the family ``openclip-vit`` partitions it), or, with
``towers="full"``, the whole open_clip CLIP (for zero-shot heads), plus a JSON manifest beside it.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import socket
import threading
import urllib.parse
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lines import __version__
from lines.clip.convert import canonical_visual, to_openclip
from lines.errors import LinesError
from lines.io import (
    open_checkpoint,
    save_state_dict,
    sha256_file,
)
from lines.io.outputs import plan_output

PathLike = str | os.PathLike[str]
Towers = Literal["visual", "full"]

# Files fetched for a whole Hub model folder: configs and safetensors weights only.
FOLDER_PATTERNS = (
    "*.json",
    "*.txt",
    "model.safetensors",
    "model-*.safetensors",
    "open_clip_model.safetensors",
)

_HF_RX = re.compile(r"^hf:(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<rev>[^/\s]+))?(?:/(?P<file>\S+))?$")
_OC_RX = re.compile(r"^openclip:(?P<model>[^:\s]+):(?P<tag>[^:\s]+)$")


@dataclass(frozen=True)
class SourceRef:
    """A parsed checkpoint reference."""

    kind: Literal["openclip", "hf", "path"]
    text: str
    repo: str | None = None
    revision: str | None = None
    file: str | None = None
    model: str | None = None
    tag: str | None = None
    path: Path | None = None


def parse_source(ref: str | os.PathLike[str]) -> SourceRef:
    """Parse ``openclip:<model>:<tag>``, ``hf:<owner>/<repo>[@<rev>][/<file>]`` or a path."""
    text = os.fspath(ref)
    if text.startswith("openclip:"):
        m = _OC_RX.match(text)
        if not m:
            raise LinesError(f"bad reference '{text}': expected openclip:<model>:<pretrained_tag>")
        return SourceRef("openclip", text, model=m["model"], tag=m["tag"])
    if text.startswith("hf:"):
        m = _HF_RX.match(text)
        if not m:
            raise LinesError(
                f"bad reference '{text}': expected hf:<owner>/<repo>[@<revision>][/<file>]"
            )
        return SourceRef("hf", text, repo=m["repo"], revision=m["rev"], file=m["file"])
    if text.startswith("path:"):
        text = text[len("path:") :]
    return SourceRef("path", text, path=Path(text).expanduser())


# ----------------------------------------------------------------------------------------------
# Fetching


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` when given, else ``HF_HUB_OFFLINE`` (environment, then huggingface_hub)."""
    if offline is not None:
        return offline
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (name lookup
    included: it runs in a thread, since ``getaddrinfo`` has no timeout of its own)."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    port = u.port or (443 if u.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


@dataclass(frozen=True)
class Fetched:
    """A reference resolved to a local file or folder."""

    ref: SourceRef
    path: Path
    commit: str | None = None  # the Hub commit of a snapshot, when known

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"ref": self.ref.text, "path": str(self.path)}
        if self.commit:
            d["commit"] = self.commit
        return d


def _hf_cli(repo: str, rev: str | None, file: str | None, cache_dir: Path) -> str:
    parts = ["hf download", repo]
    if file:
        parts.append(file)
    else:
        parts.append(" ".join(f"--include '{p}'" for p in FOLDER_PATTERNS))
    if rev:
        parts.append(f"--revision {rev}")
    parts.append(f"--cache-dir {cache_dir}")
    return " ".join(parts)


def _commit_of(path: Path) -> str | None:
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _fetch_hf(
    ref: SourceRef,
    repo: str,
    rev: str | None,
    files: list[str | None],
    cache_dir: Path,
    offline: bool,
    timeout: float,
) -> Fetched:
    """One of ``files`` (the first found; ``None`` = the whole model folder) of a Hub repo:
    from the cache when there, else downloaded unless offline or the Hub is unreachable."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError:
        raise LinesError(f"{ref.text}: huggingface_hub is not installed") from None
    first = files[0]
    what = f"{repo}/{first}" if first else f"the model folder {repo}"
    instructions = (
        f"on a machine with network run `{_hf_cli(repo, rev, first, cache_dir)}` "
        f"(fills {cache_dir}), or download {what} yourself and pass its local path"
    )

    def get(file: str | None, local_only: bool) -> Path:
        endpoint = None if local_only else hub_endpoint()
        if file:
            return Path(
                hf_hub_download(
                    repo,
                    file,
                    revision=rev,
                    cache_dir=cache_dir,
                    local_files_only=local_only,
                    etag_timeout=timeout,
                    endpoint=endpoint,
                )
            )
        p = Path(
            snapshot_download(
                repo,
                revision=rev,
                cache_dir=cache_dir,
                local_files_only=local_only,
                allow_patterns=list(FOLDER_PATTERNS),
                etag_timeout=timeout,
                endpoint=endpoint,
            )
        )
        if not any(p.glob("*.safetensors")):
            raise FileNotFoundError(f"no safetensors weights in {p}")
        return p

    for file in files:
        try:
            p = get(file, local_only=True)
            return Fetched(ref, p, _commit_of(p))
        except Exception:  # noqa: BLE001 - any miss in the local cache means: not cached
            pass
    if offline:
        raise LinesError(
            f"{ref.text}: not in the cache {cache_dir} and offline (HF_HUB_OFFLINE); {instructions}"
        )
    endpoint = hub_endpoint()
    if not reachable(endpoint, timeout):
        raise LinesError(
            f"{ref.text}: not in the cache {cache_dir} and {endpoint} is unreachable within "
            f"{timeout:g} s; {instructions}"
        )
    msg = ""
    for file in files:
        try:
            p = get(file, local_only=False)
            return Fetched(ref, p, _commit_of(p))
        except Exception as e:  # noqa: BLE001 - report any hub failure as one line
            msg = msg or (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise LinesError(f"{ref.text}: download failed ({msg}); {instructions}")


def _fetch_url(ref: SourceRef, url: str, cache_dir: Path, offline: bool, timeout: float) -> Fetched:
    import urllib.request

    target = cache_dir / "open_clip" / Path(urllib.parse.urlsplit(url).path).name
    if target.is_file():
        return Fetched(ref, target)
    instructions = f"download {url} to {target} on a machine with network"
    if offline:
        raise LinesError(f"{ref.text}: not in the cache and offline; {instructions}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 22):
                f.write(block)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LinesError(f"{ref.text}: download failed ({e}); {instructions}") from None
    return Fetched(ref, target)


def openclip_pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    from lines.clip.model import import_open_clip

    oc = import_open_clip()
    cfg = oc.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = oc.list_pretrained_tags_by_model(model)
        known = f"known tags for {model}: {', '.join(tags)}" if tags else "unknown model name"
        raise LinesError(f"openclip:{model}:{tag}: no such open_clip pretrained weights ({known})")
    return dict(cfg)


def fetch(
    ref: str | os.PathLike[str] | SourceRef,
    cache_dir: PathLike,
    *,
    offline: bool | None = None,
    timeout: float = 10.0,
) -> Fetched:
    """Resolve a reference to a local file or folder, downloading into ``cache_dir`` if needed
    (see the module docstring for the offline behaviour)."""
    r = ref if isinstance(ref, SourceRef) else parse_source(ref)
    cache = Path(cache_dir).expanduser()
    off = is_offline(offline)
    if r.kind == "path":
        assert r.path is not None
        if not r.path.exists():
            raise LinesError(f"{r.path}: no such file or folder")
        return Fetched(r, r.path)
    if r.kind == "hf":
        assert r.repo is not None
        return _fetch_hf(r, r.repo, r.revision, [r.file], cache, off, timeout)
    assert r.model is not None and r.tag is not None
    cfg = openclip_pretrained_cfg(r.model, r.tag)
    if cfg.get("file"):
        return fetch(cfg["file"], cache, offline=off, timeout=timeout)
    hub = cfg.get("hf_hub", "")
    if hub:
        # "org/repo/file" or "org/repo/" (then open_clip's default names, safetensors first).
        repo, fname = os.path.split(hub)
        names: list[str | None] = (
            [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        )
        return _fetch_hf(r, repo, cfg.get("revision"), names, cache, off, timeout)
    if cfg.get("url"):
        return _fetch_url(r, cfg["url"], cache, off, timeout)
    raise LinesError(f"{r.text}: open_clip lists no download location for it")


# ----------------------------------------------------------------------------------------------
# Reading


def pickle_globals(path: PathLike) -> list[str]:
    """The ``module.name`` globals a torch file's pickle refers to, found by reading the opcodes
    (nothing is executed). A whole pickled module shows its classes here."""
    p = Path(path)
    data: bytes
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if not names:
                return []
            data = z.read(names[0])
    else:
        data = p.read_bytes()
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if op.name == "STOP":
                break
    except Exception:  # noqa: BLE001 - a legacy or corrupt file: report what was found
        pass
    return list(dict.fromkeys(found))  # first-seen order: the root object's class comes first


_PLAIN_GLOBALS = re.compile(
    r"^(collections\.OrderedDict|torch\._utils\._rebuild_\w+|torch\.\w*Storage|torch\.storage\.\w+"
    r"|torch\.(float|bfloat|half|double|int|uint|long|bool|complex)\w*|torch\.Size|torch\.device"
    r"|_codecs\.encode|(__builtin__|builtins)\.\w+|torch\.nn\.parameter\.Parameter)$"
)


def module_classes(path: PathLike) -> list[str]:
    """Globals of a torch file that a plain state dict would not need (classes, functions)."""
    return [g for g in pickle_globals(path) if not _PLAIN_GLOBALS.match(g)]


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file or folder, loaded safely (safetensors, or torch files with
    ``weights_only=True``). A pickled whole module is refused with the way to convert it."""
    p = Path(path)
    try:
        with open_checkpoint(p) as ck:
            return {k: ck.get(k).clone() for k in ck.keys()}
    except LinesError:
        if p.is_file() and p.suffix != ".safetensors":
            try:
                classes = module_classes(p)
            except (OSError, zipfile.BadZipFile):
                classes = []
            if classes:
                shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
                raise LinesError(
                    f"{p}: a pickled whole module ({shown}), not a state dict; it is not loaded "
                    "because unpickling runs code. If you trust the file, convert it once with "
                    "lines.clip.pickled.convert_pickled_module(src, dst, "
                    "allow_unsafe_unpickling=True)"
                ) from None
        raise


@dataclass
class Prepared:
    """A checkpoint in canonical form, in memory, with what was done to it."""

    state_dict: dict[str, torch.Tensor]
    report: dict[str, Any]


def canonicalize(
    sd: Mapping[str, torch.Tensor],
    towers: Towers = "visual",
    projection: torch.Tensor | None = None,
) -> Prepared:
    """Bring a state dict of any supported layout to the canonical open_clip form:
    ``visual``: the image tower (``visual.*``); ``full``: the whole CLIP (needs the text tower)."""
    if towers == "visual":
        visual, report = canonical_visual(sd, projection)
        if "visual.proj" not in visual:
            raise LinesError(
                "the checkpoint has no image projection (a Hugging Face CLIPVisionModel, as "
                "FusionBench's): pass projection_from= the pretrained CLIP it was fine-tuned from"
            )
        return Prepared(visual, report)
    if towers != "full":
        raise LinesError(f"unknown towers '{towers}' (choose visual or full)")
    oc, layout = to_openclip(sd)
    if "logit_scale" not in oc or not any(k.startswith("transformer.resblocks.") for k in oc):
        raise LinesError(
            "towers='full' needs a whole CLIP with its text transformer; tall_masks and "
            "task_vectors checkpoints drop it (only token_embedding, ln_final, text_projection "
            "and logit_scale are left): take the text tower from the original weights, e.g. "
            "openclip:ViT-B-32:openai"
        )
    if "visual.proj" not in oc and projection is not None:
        oc["visual.proj"] = projection
    return Prepared(oc, {"layout": layout, "dropped": [], "filled": []})


def load_canonical(
    ref: str | os.PathLike[str] | SourceRef,
    cache_dir: PathLike,
    *,
    towers: Towers = "visual",
    projection_from: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    timeout: float = 10.0,
) -> tuple[Prepared, Fetched]:
    """Fetch, read and canonicalise one checkpoint (in memory)."""
    got = fetch(ref, cache_dir, offline=offline, timeout=timeout)
    sd = read_state_dict(got.path)
    projection = None
    if projection_from is not None:
        pre, _ = load_canonical(
            projection_from, cache_dir, towers="visual", offline=offline, timeout=timeout
        )
        projection = pre.state_dict["visual.proj"]
    prepared = canonicalize(sd, towers, projection)
    if projection is not None and prepared.report.get("filled"):
        prepared.report["projection_from"] = os.fspath(projection_from)
    return prepared, got


def prepare_checkpoint(
    ref: str | os.PathLike[str],
    out: PathLike,
    cache_dir: PathLike,
    *,
    towers: Towers = "visual",
    projection_from: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    timeout: float = 10.0,
    overwrite: bool = False,
    hash_source: bool = True,
) -> dict[str, Any]:
    """Fetch a checkpoint, bring it to the canonical form and write it as ``out`` (a
    ``.safetensors`` file) with ``out``'s ``.json`` manifest beside it. Returns the manifest."""
    prepared, got = load_canonical(
        ref,
        cache_dir,
        towers=towers,
        projection_from=projection_from,
        offline=offline,
        timeout=timeout,
    )
    o = Path(out)
    if o.suffix != ".safetensors":
        raise LinesError(f"{o}: the prepared checkpoint must be a .safetensors file")
    with plan_output(
        o, [got.path], overwrite, recipe={"kind": "clip-prepare", "ref": str(ref), "towers": towers}
    ) as plan:
        source = got.describe()
        if hash_source and got.path.is_file():
            source["sha256"] = sha256_file(got.path)
        info = {"towers": towers, **prepared.report}
        meta = {
            "format": "pt",
            **plan.header_metadata(),
            "lines_clip": json.dumps({"source": got.ref.text, **info}),
        }
        save_state_dict(plan.weights, prepared.state_dict, meta)
        manifest = {
            "kind": "clip-prepare",
            "lines_version": __version__,
            "source": source,
            **info,
            "num_tensors": len(prepared.state_dict),
            "output": {"path": str(o), "sha256": sha256_file(plan.weights)},
        }
        plan.publish(manifest)
    return manifest
