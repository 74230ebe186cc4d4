#!/usr/bin/env bash
# Installs what longtail needs on a Debian/Ubuntu (or any) machine: a project virtual environment
# with PyTorch, torchvision and longtail itself (editable, with the extras asked for), Fashion-MNIST, and a
# C++ compiler (torch.compile on CPU). Safe to run again; a second run takes seconds.
#   PYTHON      the interpreter to build the environment from (default python3)
#   VENV        where the environment goes (default .venv); empty (VENV=) installs into PYTHON's own
#               environment instead, for users who manage theirs (an activated venv, conda, ...)
#   EXTRAS      longtail's extras to add, e.g. test or docs (default none: what `make demo` needs)
#   TORCH_SPEC  the pip arguments for PyTorch (default the CUDA build from PyPI, about 5 GB). Without an NVIDIA
#               driver take the CPU build: TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu".
#               The spec installed is recorded in the environment and kept while TORCH_SPEC is unset; a
#               different TORCH_SPEC on a later run uninstalls torch and installs the one given.
# The distribution's Python (Debian 12+, Ubuntu 23.04+) refuses `pip install` outside a virtual
# environment (PEP 668), hence the project environment by default.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV-.venv}
torch_spec_given=${TORCH_SPEC:+yes}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
EXTRAS=${EXTRAS-}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup: no Python interpreter '$PYTHON'; install python3 (apt install python3) or set PYTHON=/path/to/python3" >&2
    exit 1
fi
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup: longtail needs Python >= 3.10, but $PYTHON is $version; set PYTHON to a newer one" >&2
    exit 1
fi

# What apt should add: Debian/Ubuntu ship venv's ensurepip separately (pythonX.Y-venv).
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v "${CXX:-g++}" >/dev/null 2>&1 || missing+=(g++)
# a missing or half-made environment (interrupted, or made without pip) is made (again)
make_venv=""
if [ -n "$VENV" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then make_venv=yes; fi
if [ -n "$make_venv" ] && [ -n "$(ls -A "$VENV" 2>/dev/null)" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "setup: $VENV exists and is not a virtual environment; move it away or choose another VENV=" >&2
    exit 1
fi
if [ -n "$make_venv" ] && ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
    missing+=("python$version-venv")
fi
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    echo "setup: installing ${missing[*]} with apt"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-upgrade "${missing[@]}" >/dev/null; } ||
        echo "setup: apt could not install ${missing[*]}"
fi
if ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
    echo "setup: no C++ compiler; train.compile (torch.compile) on CPU needs one: install g++ (apt install g++)"
fi

if [ -n "$make_venv" ]; then
    if ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
        echo "setup: $PYTHON cannot create a virtual environment: install python$version-venv" \
             "(apt install python$version-venv), or use your own environment with VENV=" >&2
        exit 1
    fi
    echo "setup: creating the virtual environment $VENV from $PYTHON ($version)"
    "$PYTHON" -m venv --clear "$VENV"
fi
if [ -n "$VENV" ]; then
    py=$VENV/bin/python
else
    py=$PYTHON
fi

# The torch spec this script installed last, kept in the environment itself: an unset TORCH_SPEC keeps it, a
# different one replaces torch (pip would keep an installed torch as it is, CUDA build or not).
torch_record="$("$py" -c 'import sys; print(sys.prefix)')/.longtail-torch-spec"
installed_spec=$(cat "$torch_record" 2>/dev/null || true)
if [ -z "$torch_spec_given" ] && [ -n "$installed_spec" ]; then TORCH_SPEC=$installed_spec; fi

# The stamp records what was installed; the same Python, torch spec, extras, pyproject.toml and checkout skip pip.
stamp_file=${VENV:+$VENV/.longtail-setup}
stamp="$("$py" -c 'import sys; print(sys.executable)') | $TORCH_SPEC | [$EXTRAS] | $(sha256sum pyproject.toml | cut -d' ' -f1) | $PWD"
if [ -n "$stamp_file" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    echo "setup: $VENV is up to date (delete $stamp_file to reinstall)"
else
    if "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
        if { [ -n "$installed_spec" ] && [ "$installed_spec" != "$TORCH_SPEC" ]; } ||
           { [ -z "$installed_spec" ] && [ -n "$torch_spec_given" ]; }; then
            echo "setup: TORCH_SPEC is now '$TORCH_SPEC' (installed: '${installed_spec:-unknown}'); reinstalling torch"
            "$py" -m pip uninstall -q -y torch torchvision
        fi
    fi
    if ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
        echo "setup: installing $TORCH_SPEC for $py (a few minutes the first time)"
        # shellcheck disable=SC2086
        "$py" -m pip install -q $TORCH_SPEC
        echo "$TORCH_SPEC" >"$torch_record" || true
    fi
    if [ -n "$EXTRAS" ]; then
        echo "setup: installing longtail (editable, with the extras: $EXTRAS)"
        "$py" -m pip install -q -e ".[$EXTRAS]"
    else
        echo "setup: installing longtail (editable; the tests' packages come with make test)"
        "$py" -m pip install -q -e .
    fi
    if [ -n "$stamp_file" ]; then echo "$stamp" >"$stamp_file"; fi
fi

# Without the Debian package, fetch Fashion-MNIST once through torchvision into ~/.cache/longtail.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    "$py" -c "from longtail.data.fmnist import locate; print('setup: Fashion-MNIST in', locate(None, download=True))"
fi
