#!/usr/bin/env bash
# Install what the tests need and run the whole suite. This is the README's test command and
# exactly what CI (.ci/run) runs. Torch is pinned first: on these machines `torch==2.13.0`
# resolves to a local CPU build, whereas an unpinned torch would pull gigabytes of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
exec python3 -m pytest "$@"
