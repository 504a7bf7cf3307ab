"""One version: the package's, the installed metadata's and the plugin's agree."""

import importlib.metadata
import os

import yaml

import transferscope

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def _code_lines(source_lines, node):
    """Lines of a function's body, its docstring, blank lines and comments left out."""
    import ast

    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    if not body:
        return 0
    lines = source_lines[body[0].lineno - 1 : node.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def _sdk_trees(packages=("transferscope",)):
    import ast

    for package in packages:
        folder = os.path.join(REPO_ROOT, package)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    source = f.read()
                yield f"{package}/{name}", source.splitlines(), ast.parse(source)


def test_no_function_is_longer_than_80_lines_of_code():
    import ast

    long = [
        f"{name}:{node.lineno} {node.name} ({_code_lines(lines, node)} lines)"
        for name, lines, tree in _sdk_trees(("transferscope", "operators", "compute", "plugin"))
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and _code_lines(lines, node) > 80
    ]
    assert not long, long


def test_the_sdk_imports_the_engine_at_the_top_of_its_modules():
    import ast

    inside = []
    for name, _, tree in _sdk_trees():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                module = None
                if isinstance(node, ast.ImportFrom):
                    module = ("." * node.level) + (node.module or "")
                    module += "." + ",".join(a.name for a in node.names)
                elif isinstance(node, ast.Import):
                    module = ",".join(a.name for a in node.names)
                if module and ("compute" in module.split(".") or "compute," in module):
                    inside.append(f"{name}:{node.lineno} {module}")
    assert not inside, inside
