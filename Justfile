# Everyday commands. `just --list` shows them. Each wraps a script or a CLI call so they also work without just.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv/bin/"

# Create .venv and install mosaic-edge with all extras (CPU torch pinned first).
install:
    bash scripts/setup.sh

# Lint + the whole test suite (the command .ci/run calls).
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# Fast tests only (skip the ones marked slow).
test-fast:
    bash scripts/test.sh -m "not slow"

# ruff + mypy.
lint:
    {{venv}}ruff check .
    {{venv}}mypy

# Train -> export --int8 -> serve --once -> profile on the built-in synthetic benchmark.
demo:
    bash scripts/demo.sh

# Benchmarks (minutes to tens of minutes on 2 cores); results go to benchmarks/RESULTS.md by hand.
bench:
    {{venv}}python benchmarks/synthetic_baselines.py
    {{venv}}python benchmarks/export_int8_cpu.py
    {{venv}}python benchmarks/runtime_overhead.py

# The one GPU check script (scripts/gpu_checks: CUDA training steps, both CUDA adapters, CUDA-graph device-time
# reference, TensorRT fp16 vs INT8 engines from an export). E.g. `just gpu-check --export runs/m1/export`.
gpu-check *ARGS:
    {{venv}}python scripts/gpu_check.py {{ARGS}}

# Environment report.
doctor:
    {{venv}}mosaic-edge doctor
