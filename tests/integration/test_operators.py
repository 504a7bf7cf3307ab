"""The plugin through FiftyOne's real loader and operator machinery."""

import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.delegated as food
import pytest
from fiftyone.operators.executor import ExecutionError, ExecutionRunState
from helpers.delegated import run_with_worker
from helpers.tiny import operator_params

URI = "@transferscope/transferscope/compute_class_influence"


def _fiftyone(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_plugin_loads_in_fiftyones_loader():
    plugins = _fiftyone("plugins", "list")
    assert "@transferscope/transferscope" in plugins.stdout, plugins.stdout + plugins.stderr
    ops = _fiftyone("operators", "list")
    for name in (
        "compute_class_influence",
        "compute_sample_influence",
        "tag_classes",
        "tag_samples",
        "evaluate_curation",
        "detect_leakage",
        "find_near_duplicates",
        "plan_class_diversity",
        "find_subpopulations",
        "explain_failures",
    ):
        assert f"@transferscope/transferscope/{name}" in ops.stdout, ops.stdout + ops.stderr
    assert "Failed to register" not in plugins.stderr + ops.stderr


_params = operator_params


def test_operator_runs_immediately_and_writes_fields(tiny_datasets):
    pre, tgt = tiny_datasets
    result = foo.execute_operator(URI, ctx=dict(dataset=tgt, params=_params(pre, tgt, "op")))
    assert result.error is None, result.error
    out = result.result
    assert out["run_key"] == "op" and len(out["most_helpful"]) == 5
    assert tgt.has_sample_field("op_helpful") and pre.has_sample_field("op_influence")
    assert "op" in tgt.list_runs()
    assert tgt.match_tags("test").exists("op_harmful").count() == 18


def test_operator_form_rejects_bad_input(tiny_datasets):
    pre, tgt = tiny_datasets
    for bad in (
        dict(alpha=1.5),
        dict(run_key="not a key"),
        dict(holdout_models=2),
        dict(design="latin"),
        dict(estimator="ridge"),
    ):
        with pytest.raises(ExecutionError):
            foo.execute_operator(URI, ctx=dict(dataset=tgt, params=_params(pre, tgt, "x", **bad)))
    assert not tgt.has_sample_field("x_helpful")
    assert not any(f.endswith("_helpful") for f in tgt.get_field_schema())


def test_operator_reports_the_design_q_values_and_reliability(tiny_datasets):
    pre, tgt = tiny_datasets
    params = _params(
        pre, tgt, "rel", num_models=20, holdout_models=3, design="orthogonal", estimator="auto"
    )
    result = foo.execute_operator(URI, ctx=dict(dataset=tgt, params=params))
    assert result.error is None, result.error
    out = result.result
    assert out["design"].startswith("orthogonal, 32 models; 20 models rounded up to 32")
    assert all("q=" in line for line in out["most_harmful"])
    stored = tgt.load_run_results("rel", cache=False).metrics
    assert out["lds"] == stored["lds"] and out["split_half_z_sd"] == stored["split_half_z_sd"]
    assert isinstance(out["num_harmful_at_fdr"], int)


def test_operator_trains_in_groups_with_shift_augmentation(tiny_datasets):
    pre, tgt = tiny_datasets
    params = _params(pre, tgt, "grp", group_size=2, augment_shift=1)
    result = foo.execute_operator(URI, ctx=dict(dataset=tgt, params=params))
    assert result.error is None, result.error
    assert tgt.get_run_info("grp").config.augment_shift == 1
    assert tgt.match_tags("test").exists("grp_harmful").count() == 18
    for bad in (dict(group_size=0), dict(augment_shift=-1)):
        with pytest.raises(ExecutionError):
            foo.execute_operator(URI, ctx=dict(dataset=tgt, params=_params(pre, tgt, "bad", **bad)))
    assert "bad" not in tgt.list_runs()


def test_operator_error_names_the_problem(tiny_datasets):
    pre, tgt = tiny_datasets
    params = _params(pre, tgt, "e", test_split="train", train_split="train")
    with pytest.raises(Exception, match="in both the train and the test split"):
        foo.execute_operator(URI, ctx=dict(dataset=tgt, params=params))


@pytest.mark.slow
def test_delegated_run_through_fiftyone_delegated_launch(tiny_datasets):
    pre, tgt = tiny_datasets
    pre.persistent = True  # a worker process loads them by name
    tgt.persistent = True
    queued = foo.execute_operator(
        URI, ctx=dict(dataset=tgt, params=_params(pre, tgt, "deleg")), request_delegation=True
    )
    assert queued.delegated
    dos = food.DelegatedOperationService()
    ops = dos.list_operations(dataset_name=tgt.name)
    assert len(ops) == 1 and ops[0].run_state == ExecutionRunState.QUEUED
    assert not tgt.has_sample_field("deleg_helpful")  # nothing ran yet

    op, log = run_with_worker(ops[0].id)
    assert op.run_state == ExecutionRunState.COMPLETED, (op.run_state, op.run_link, log[-3000:])
    assert op.status.progress == pytest.approx(1.0)
    assert "4/4 models trained" in (op.status.label or "")
    tgt.reload()
    assert tgt.match_tags("test").exists("deleg_helpful").count() == 18
    assert "deleg" in fo.load_dataset(tgt.name).list_runs()
