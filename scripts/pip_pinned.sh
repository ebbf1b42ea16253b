#!/usr/bin/env bash
# Shared by the asset installers: install pinned packages with --no-deps, then check each is
# installed at exactly its pinned version.  pip_pinned PYTHON LABEL PIN...
pip_pinned() {
  local py=$1 label=$2; shift 2
  "$py" -m pip install -q --no-deps "$@" 2>&1 | grep -v '^WARNING: Location' || true
  "$py" - "$label" "$@" <<'PYEOF'
import importlib.metadata as md, sys
label, bad = sys.argv[1], []
for pin in sys.argv[2:]:
    name, version = pin.split("==")
    try:
        found = md.version(name)
    except md.PackageNotFoundError:
        found = None
    if found != version:
        bad.append(f"{pin} (found {found})")
if bad:
    sys.exit(f"{label}: not installed as pinned: " + ", ".join(bad))
PYEOF
}
