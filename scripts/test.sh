#!/usr/bin/env bash
# Runs the test suite (sets up .venv first if needed). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the browser test drives Debian's Chromium (Playwright's own browser download
# does not work offline); install it where we can, else that test skips and says why
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q chromium >/dev/null 2>&1 \
      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
      || echo "could not install chromium; the browser test will skip"
  else
    echo "chromium is not installed (apt-get install chromium as root); the browser test will skip"
  fi
fi
export FIFTYONE_DO_NOT_TRACK=true
.venv/bin/ruff check --quiet .   # lint first: it takes a second
.venv/bin/ruff format --check --quiet .
# the import contract (pyproject's [tool.importlinter]): the report only when broken
contract=$(.venv/bin/python scripts/check_imports.py 2>&1) || { echo "$contract"; exit 1; }
exec .venv/bin/python -m pytest "$@"
