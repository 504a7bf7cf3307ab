"""The README's Python quickstart runs as written, on a tiny problem.

Each ```python block of README.md runs, statement by statement, with the tiny
datasets' names in place of its placeholders ("my-pretraining-set",
"my-task") and nothing else changed: the README's defaults and its 144
models. On the tiny problem no class need be harmful at false-discovery level
0.1; where none is, ``tag_classes`` must refuse with its documented message
(checked against the run's q-values), and the statements after it cannot
run here: the demo runs the same two calls on a planted harmful class
(tests/acceptance/test_demo.py).
"""

import ast
import os
import re

import numpy as np
from helpers.tiny import build_tiny_datasets

from transferscope import TransferScopeError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLACEHOLDERS = ('"my-pretraining-set"', '"my-task"')


def python_blocks():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_readme_quickstart_runs_on_a_tiny_problem_up_to_the_curation_it_needs(
    tmp_path, monkeypatch
):
    blocks = python_blocks()
    assert blocks, "the README has no Python block"
    monkeypatch.setenv("TRANSFERSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    pre, tgt = build_tiny_datasets(tmp_path)
    try:
        for block in blocks:
            code = block
            for placeholder, name in zip(PLACEHOLDERS, (pre.name, tgt.name)):
                assert placeholder in code
                code = code.replace(placeholder, repr(name))
            scope = {}
            for statement in ast.parse(code).body:
                source = ast.get_source_segment(code, statement)
                try:
                    exec(compile(ast.Module([statement], []), "README.md", "exec"), scope)
                except TransferScopeError as e:
                    # the one refusal the quickstart may meet on a tiny problem
                    assert "ts.tag_classes(" in source, source
                    assert "no class is harmful at false-discovery level 0.1" in str(e)
                    results = scope["results"]
                    harmful = (results.class_influence < 0) & (np.asarray(results.q_values) < 0.1)
                    assert not harmful.any()
                    return  # the curation lines need a harmful class (see above)
        results = scope["results"]
        assert results.metrics["num_models"] == 144 and results.metrics["design"] == "orthogonal"
        assert set(scope["summary"]["confirmed"]) <= set(scope["summary"]["removed"])
    finally:
        for ds in (pre, tgt):
            ds.delete()


def test_the_demo_page_quotes_the_planner_demos_report():
    # the table is written from the committed report of `transferscope demo --planner`
    import json

    from transferscope.planner_demo import planner_table

    with open(os.path.join(REPO_ROOT, "docs", "planner_report.json")) as f:
        report = json.load(f)
    with open(os.path.join(REPO_ROOT, "docs", "demo.md")) as f:
        page = f.read()
    assert planner_table(report) in page
