#!/usr/bin/env bash
# Makes tests/export/.venv, the Python the export test runs (onnxruntime, numpy and
# safetensors load what `fl-agent export` writes), with the pinned packages of
# requirements.txt beside this script; remade when that file changes, else only checked.
# python3 and python3-venv: tests/devnet/packages.sh test. Called by `make test`.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f .venv/.fl-installed ] || [ requirements.txt -nt .venv/.fl-installed ]; then
  echo "export venv: installing $(tr '\n' ' ' < requirements.txt)into tests/export/.venv" >&2
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt >&2
  touch .venv/.fl-installed
fi
