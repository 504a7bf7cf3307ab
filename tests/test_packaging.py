"""One version: the package's, the installed metadata's and the plugin's agree."""

import importlib.metadata
import os

import yaml

import transferscope

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_version_in_the_package_the_metadata_and_the_plugin():
    with open(os.path.join(REPO_ROOT, "fiftyone.yml")) as f:
        plugin = yaml.safe_load(f)
    assert plugin["version"] == transferscope.__version__
    assert importlib.metadata.version("transferscope") == transferscope.__version__


def test_every_operator_the_plugin_registers_is_listed_in_fiftyone_yml():
    import ast

    with open(os.path.join(REPO_ROOT, "fiftyone.yml")) as f:
        listed = set(yaml.safe_load(f)["operators"])
    names = set()
    for module in os.listdir(os.path.join(REPO_ROOT, "operators")):
        if module.endswith(".py"):
            with open(os.path.join(REPO_ROOT, "operators", module)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", "") == "operator_config"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    names.add(node.args[0].value)
    assert names and names <= listed


def test_importing_the_sdk_loads_neither_torch_nor_faiss():
    # the engine's names load on first use (compute/__init__.py), so the SDK
    # imports at the top of its modules and ``import transferscope`` stays light
    import subprocess
    import sys

    code = (
        "import sys, transferscope, transferscope.compute as c; "
        "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules)); "
        "c.TransferData; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "True"  # and the lazy names do resolve


def test_the_engine_exports_every_name_it_lists():
    import transferscope.compute as tsc

    for name in tsc.__all__:
        assert getattr(tsc, name) is not None, name
    assert "engine" in dir(tsc)
