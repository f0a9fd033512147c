#!/usr/bin/env bash
# The main job: install keepmix (once) and train a short KeepCutout run on CIFAR-10 on the CPU.
# Data: $KEEPMIX_CIFAR10_JPEG (default: ../shared/data/cifar10-jpeg.tar.gz beside the checkout
# when it exists); without it, CIFAR-10 is downloaded. Runs go to ./runs of the folder this is
# started from (or --out-dir DIR); every path printed is absolute. KEEPMIX_REINSTALL=1 forces
# the install again.
set -euo pipefail
here="$(pwd)"
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${KEEPMIX_REINSTALL:-0}" = 1 ] || ! python3 -c "import keepmix, yaml, tqdm, matplotlib" 2>/dev/null \
    || [ "$(python3 -c 'import keepmix, os; print(os.path.dirname(os.path.dirname(os.path.realpath(keepmix.__file__))))')" != "$repo" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
  python3 -m pip install --quiet --disable-pip-version-check -e "$repo[train]"
fi
if [ -z "${KEEPMIX_CIFAR10_JPEG:-}" ] && [ -f "$repo/../shared/data/cifar10-jpeg.tar.gz" ]; then
  export KEEPMIX_CIFAR10_JPEG="$(cd "$repo/../shared/data" && pwd)/cifar10-jpeg.tar.gz"
fi
cd "$here"
status=0
python3 -m keepmix train cifar10-small-keepcutout-quick --out-dir "$here/runs" "$@" || status=$?
if [ -n "${KEEPMIX_CIFAR10_JPEG:-}" ]; then
  # The variable was set for this script only: keepmix show / train in your shell need it too (offline).
  echo "to use the same data in your shell (keepmix show, keepmix train): export KEEPMIX_CIFAR10_JPEG=$KEEPMIX_CIFAR10_JPEG" >&2
fi
exit "$status"
