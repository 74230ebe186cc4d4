#!/usr/bin/env bash
# Installs what longtail needs on a Debian/Ubuntu (or any) machine: Fashion-MNIST, PyTorch and
# torchvision, and longtail itself in editable mode with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist; }; then
        echo "setup: apt could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded instead"
    fi
fi

if ! "$PYTHON" -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "setup: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q $TORCH_SPEC
fi
"$PYTHON" -m pip install -q -e ".[test]"

# Without the Debian package, fetch Fashion-MNIST once through torchvision into ~/.cache/longtail.
"$PYTHON" -c "from longtail.data.fmnist import locate; print('setup: Fashion-MNIST in', locate(None, download=True))"
