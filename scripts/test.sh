#!/usr/bin/env bash
# Runs the test suite (sets up .venv first if needed). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FIFTYONE_DO_NOT_TRACK=true
exec .venv/bin/python -m pytest "$@"
