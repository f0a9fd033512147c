#!/usr/bin/env bash
# The second test environment: keepmix against the real torchvision, timm and Lightning.
#
#   bash scripts/test-interop.sh [pytest args]
#
# Makes a venv of its own (KEEPMIX_INTEROP_VENV, default .venv-interop in the repo) with the
# pinned peers, installs keepmix into it editable, and runs tests/interop/ (pyproject's pytest
# settings apply: the main suite's timeouts). A venv that already holds the pinned set is reused.
# The main suite (scripts/test.sh) stays on torch 2.13.0 without torchvision or timm.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KEEPMIX_INTEROP_VENV:-.venv-interop}"
# torch first and pinned with torchvision: on these machines both resolve to local wheels for
# Python 3.11; unpinned, pip would resolve a different (multi-GB) torch.
PEERS=("torch==2.14.1" "torchvision==0.29.1")
PINNED=("timm==1.0.31" "lightning==2.6.6" "pytorch-lightning==2.6.6")
LIGHT=("numpy>=1.23" "pillow>=9.1" "pytest>=9" "pytest-timeout>=2.3" "scipy>=1.10" "hypothesis>=6.80")
PIP=(--quiet --disable-pip-version-check)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  printf '*\n' >"$VENV/.gitignore" # the venv ignores itself (git status stays clean)
fi
PY="$VENV/bin/python"

# Reuse: every pin installed at its exact version, and the light deps importable.
if ! "$PY" - "${PEERS[@]}" "${PINNED[@]}" <<'PYEOF' 2>/dev/null; then
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert md.version(name) == version, pin
import numpy, PIL, pytest, pytest_timeout, scipy, hypothesis  # noqa: E401,F401
PYEOF
  echo "test-interop: installing the pinned set into $VENV" >&2
  "$PY" -m pip install "${PIP[@]}" "${PEERS[@]}"
  "$PY" -m pip install "${PIP[@]}" "${PEERS[@]}" "${PINNED[@]}" "${LIGHT[@]}"
fi

# keepmix from this checkout (editable, without its dependencies: torch is the pinned one).
if ! "$PY" -c "import keepmix, pathlib, sys; sys.exit(pathlib.Path(keepmix.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())" 2>/dev/null; then
  "$PY" -m pip install "${PIP[@]}" --no-deps -e .
fi
exec "$PY" -m pytest tests/interop "$@"
