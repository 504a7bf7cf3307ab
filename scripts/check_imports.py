"""Checks the import contract in pyproject.toml ([tool.importlinter]) with import-linter.

The source folders are installed under one import name (pyproject's
``package-dir``: ``compute/`` is ``transferscope.compute``, and so on), a layout
import-linter cannot follow; so the check runs on a copy of the sources laid
out as they are installed, in a temporary folder.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in package_dir.items():
            dest = os.path.join(tmp, *name.split("."))
            os.makedirs(dest, exist_ok=True)
            src = os.path.join(ROOT, folder)
            for entry in os.listdir(src):
                if entry.endswith(".py"):
                    shutil.copy2(os.path.join(src, entry), dest)
        env = dict(os.environ, PYTHONPATH=tmp)
        lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
        return subprocess.call(
            [lint, os.path.join(ROOT, "pyproject.toml"), "--no-cache"], cwd=tmp, env=env
        )


if __name__ == "__main__":
    sys.exit(main())
