#!/usr/bin/env bash
# One command for a new user: set up, build the demo datasets, compute class influence.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FIFTYONE_DO_NOT_TRACK=true
exec .venv/bin/transferscope demo "$@"
