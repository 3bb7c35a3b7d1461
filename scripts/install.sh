#!/usr/bin/env sh
# Create .venv beside this repository and install moe-tui into it (with the test tools when given --dev).
# torch comes first: on a machine with an NVIDIA driver, the default (CUDA) build from PyPI; elsewhere the
# CPU-only build, so a laptop or a CI box does not download gigabytes of CUDA libraries.
set -eu
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "moe-tui needs Python 3.10 or newer")'
[ -x .venv/bin/python ] || python3 -m venv .venv
pip="./.venv/bin/python -m pip"

torch_spec="torch==2.13.0"
if ./.venv/bin/python -c 'import torch' 2>/dev/null; then
    : # keep the torch already installed (CPU or CUDA)
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $pip install "$torch_spec"
else
    # The CPU wheel index is tried once; where it cannot be reached, a locally provided CPU wheel is used.
    $pip install --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu "$torch_spec"
fi
$pip install -e ".$extras"
