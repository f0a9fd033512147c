#!/usr/bin/env bash
# The main job: install keepmix and train a short KeepCutout run on CIFAR-10 on the CPU.
# Data: $KEEPMIX_CIFAR10_JPEG (default: ../shared/data/cifar10-jpeg.tar.gz beside the checkout
# when it exists); without it, CIFAR-10 is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e ".[train]"
if [ -z "${KEEPMIX_CIFAR10_JPEG:-}" ] && [ -f ../shared/data/cifar10-jpeg.tar.gz ]; then
  export KEEPMIX_CIFAR10_JPEG="$(cd ../shared/data && pwd)/cifar10-jpeg.tar.gz"
fi
exec keepmix train cifar10-small-keepcutout-quick "$@"
