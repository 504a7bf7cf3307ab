"""What the test tiers share: the tiny datasets, the subprocess drivers, paths."""

import os

import pytest

HELPERS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HELPERS_DIR))


def skip_unless_ci(reason):
    """Skips the calling test module, except in CI (TRANSFERSCOPE_CI=1), where
    what it needs must be there, so the module fails instead of skipping."""
    if os.environ.get("TRANSFERSCOPE_CI") == "1":
        raise RuntimeError(f"CI must run this test module, but: {reason}")
    pytest.skip(reason, allow_module_level=True)
