#!/usr/bin/env sh
# Download into .whl/ the wheels the lent GPU machine lacks, for `benchmarks/cuda_check.py` there.
#
# That machine cannot reach the network. Its Python 3.12 already holds torch (CUDA), tokenizers, safetensors,
# psutil, nvidia-ml-py, rich and pytest, but not hqq, textual or platformdirs, and its transformers (5.17) is
# older than the one the suite is tested with here, so transformers travels too. .whl/ is git-ignored; name
# it in the device call's `carry` and start the command with the install line this script prints last.
set -eu
cd "$(dirname "$0")/.."

rm -rf .whl
mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest .whl \
    termcolor \
    "textual==8.2.8" mdit-py-plugins platformdirs \
    "transformers==5.24.0" \
    "pytest-textual-snapshot==1.1.0" syrupy
# hqq is published as a source archive only; it is pure Python, so a wheel built here installs there.
python3 -m pip wheel --quiet --no-deps --wheel-dir .whl "hqq==0.2.8.post1"
# transformers checks its own dependencies' versions on import; where that machine's are older, these replace them
# (installed only when the import fails, so a machine whose packages already suit keeps its own).
mkdir .whl/extra
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest .whl/extra \
    "huggingface-hub>=1.31,<2" "tokenizers>=0.23.1,<0.24" "safetensors>=0.8" "regex>=2025.10.22" hf-xet
du -sh .whl
echo "on the device: I='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
--target /tmp/site'; \$I .whl/*.whl || exit; export PYTHONPATH=/tmp/site:\$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; \
python3 -c 'import transformers.models.mixtral' 2>/dev/null || \$I .whl/extra/*.whl || exit; \
python3 benchmarks/cuda_check.py --deadline 540 --out \$OUT 2>&1 | tee \$OUT/log.txt"
echo "(give the call a time limit 50 s over --deadline: 590 s for the 540 above)"
