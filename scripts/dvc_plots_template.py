#!/usr/bin/env python
"""Offline DVC: an HTML template for ``dvc plots show`` with vega, vega-lite and vega-embed inlined
(DVC's default page loads them from a CDN and renders blank without internet), and the project's
DVC settings.

    python scripts/dvc_plots_template.py build [--node-modules DIR]   # npm → .dvc/plots_offline.html
    python scripts/dvc_plots_template.py configure                    # dvc config (idempotent)
    python scripts/dvc_plots_template.py check dvc_plots/index.html   # no CDN/remote script

``build`` installs the pinned npm packages into a temporary folder (``npm install``, registry
access needed once) unless ``--node-modules`` points at an existing ``node_modules``; the
template is committed, so users and CI need neither npm nor internet afterwards. ``configure``
sets ``core.analytics false`` and ``plots.html_template`` in ``.dvc/config`` and keeps the
stack's state folders out of DVC's workspace walk (``.dvcignore``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ".dvc/plots_offline.html"  # plots.html_template is relative to .dvc/
PINS = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # majors of dvc-render
BUNDLES = {
    "vega": "build/vega.min.js",
    "vega-lite": "build/vega-lite.min.js",
    "vega-embed": "build/vega-embed.min.js",
}
DVCIGNORE = ["/.venv/", "/.stack/", "/mlflow/", "/.mlflow-local/"]
# A <script src=...> with a URL, or a CDN host anywhere: the page must not reach out.
REMOTE = re.compile(
    r"<script[^>]+src\s*=\s*[\"']?(https?:)?//|cdn\.jsdelivr\.net|unpkg\.com|cdnjs", re.I
)

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Offline template (scripts/dvc_plots_template.py): %(versions)s inlined. -->
%(scripts)s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def npm_install(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "package.json").write_text('{"name": "lines-dvc-plots", "private": true}\n')
    subprocess.run(
        ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--save-exact"]
        + [f"{k}@{v}" for k, v in PINS.items()],
        cwd=dest,
        check=True,
    )
    return dest / "node_modules"


def build(node_modules: Path | None, out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        nm = node_modules or npm_install(Path(tmp))
        scripts, versions = [], []
        for pkg, rel in BUNDLES.items():
            meta = json.loads((nm / pkg / "package.json").read_text())
            if meta["version"] != PINS[pkg]:
                raise SystemExit(f"{pkg} {meta['version']} in {nm}, expected {PINS[pkg]}")
            js = (nm / pkg / rel).read_text()
            if "</script" in js.lower() or "{plot_divs}" in js or "{refresh_tag}" in js:
                raise SystemExit(f"{pkg}/{rel} cannot be inlined as is")
            sha = hashlib.sha256(js.encode()).hexdigest()[:16]
            versions.append(f"{pkg} {meta['version']}")
            scripts.append(
                f'    <script type="text/javascript">/* {pkg} {meta["version"]} sha256:{sha}… */\n{js}\n    </script>'
            )
    html = PAGE % {"versions": ", ".join(versions), "scripts": "\n".join(scripts)}
    # No {scripts} placeholder: dvc-render only inserts its CDN <script> tags where it finds one.
    assert "{scripts}" not in html and "{plot_divs}" in html
    out.write_text(html)
    return out


def configure(root: Path) -> None:
    def dvc(*a: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *a], cwd=root, check=True)

    dvc("config", "core.analytics", "false")
    if (root / TEMPLATE).is_file():
        dvc("config", "plots.html_template", Path(TEMPLATE).name)
    else:
        print(f"warning: {TEMPLATE} missing; run 'build' first", file=sys.stderr)
    ign = root / ".dvcignore"
    have = ign.read_text().splitlines() if ign.exists() else []
    add = [p for p in DVCIGNORE if p not in have]
    if add:
        with open(ign, "a") as f:
            f.write("# stack state and tracking stores (scripts/dvc_plots_template.py configure)\n")
            f.write("\n".join(add) + "\n")


def check(page: Path) -> int:
    text = page.read_text()
    bad = sorted({m.group(0) for m in REMOTE.finditer(text)})
    if bad:
        print(f"{page}: remote script/CDN references: {bad}", file=sys.stderr)
        return 1
    if "vegaEmbed" not in text:
        print(f"{page}: no vega-embed call (no plot rendered?)", file=sys.stderr)
        return 1
    print(f"{page}: offline (no CDN, vega inlined)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--node-modules", type=Path, default=None)
    b.add_argument("--root", type=Path, default=ROOT)
    c = sub.add_parser("configure")
    c.add_argument("--root", type=Path, default=ROOT)
    k = sub.add_parser("check")
    k.add_argument("page", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        out = build(a.node_modules, a.root / TEMPLATE)
        print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
        configure(a.root)
        return 0
    if a.cmd == "configure":
        configure(a.root)
        return 0
    return check(a.page)


if __name__ == "__main__":
    sys.exit(main())
