"""plan_class_diversity end to end on a tiny configuration, and its bad input."""

import fiftyone.operators as foo
import numpy as np
import pytest

from transferscope import TransferScopeError
from transferscope.diversity import describe_diversity, plan_class_diversity
from transferscope.plots import diversity_plotly

PLUGIN = "@transferscope/transferscope"


@pytest.fixture()
def influence_run(tiny_run):
    pre, tgt, _ = tiny_run
    return pre, tgt


def test_plan_end_to_end_writes_the_plan_view_and_run(influence_run):
    pre, tgt = influence_run
    calls = []
    summary = plan_class_diversity(
        tgt,
        "infl",
        key="div",
        budgets=[12, 20],
        full_budget=30,
        num_points=4,
        num_seeds=2,
        max_seeds=4,
        round_seeds=2,
        sample_choice="coverage",
        progress=lambda d, t: calls.append((d, t)),
    )
    pred = summary["prediction"]
    assert set(summary["per_budget"]) == {"12", "20", "30"}
    assert summary.describe() == describe_diversity(summary)
    assert summary.plotly() == diversity_plotly(summary)
    for row in summary["per_budget"].values():
        assert len(row["grid"]) >= 3 and row["sweep_best_K"] > 0
    k, n = pred["K_plan"], pred["n_plan"]
    assert 2 <= k <= 6 and k * n <= 30
    view = pre.load_saved_view("div_plan")
    assert len(view) == k * n
    assert len(view.distinct("ground_truth.label")) == k
    assert view.count_values("ground_truth.label") == {c: n for c in summary["plan_classes"]}
    ver = summary["verification"]
    for name, arm in (
        ("accuracy_at_predicted_K", "predicted_K"),
        ("accuracy_all_classes", "all_classes"),
        ("accuracy_plan", "plan"),
    ):  # each arm's accuracy is the mean of its seeds' cells
        errors = [c["error"] for c in summary["cells"] if c["arm"] == arm]
        assert len(errors) == ver["num_seeds"]
        assert ver[name] == pytest.approx(1 - np.mean(errors))
    assert "div" in pre.list_runs()
    assert pre.load_run_results("div").summary["prediction"]["K_plan"] == k
    assert calls and calls[-1][0] == calls[-1][1]
    pre.delete_run("div")
    assert not pre.has_saved_view("div_plan")


def test_bad_input_is_refused(influence_run):
    pre, tgt = influence_run
    cases = [
        (dict(budgets=[12], full_budget=30), "at least two different small budgets"),
        (dict(budgets=[12, 40], full_budget=30), "must lie below the full budget"),
        (dict(budgets=[12, 20], full_budget=1000), "exceeds the 60 pretraining samples"),
        (
            dict(budgets=[12, 20], full_budget=30, num_points=2),
            "num_points must be an integer >= 3",
        ),
        (dict(budgets=[2, 20], full_budget=30), "too small"),
        (dict(budgets=[12, 20], full_budget=30, class_choice="best"), "class_choice must be"),
        (dict(budgets=[12, 20], full_budget=59), "feasible points"),
    ]
    for kw, message in cases:
        with pytest.raises(TransferScopeError, match=message):
            plan_class_diversity(tgt, "infl", key="bad", **kw)
        assert "bad" not in pre.list_runs()


def test_operator_through_fiftyones_machinery(influence_run, tmp_path):
    pre, tgt = influence_run
    out = foo.execute_operator(
        f"{PLUGIN}/plan_class_diversity",
        ctx=dict(
            dataset=tgt,
            params=dict(
                influence_run="infl",
                budgets="12,20",
                full_budget=30,
                num_points=4,
                num_seeds=2,
                class_choice="random",
                sample_choice="random",
                verify=False,
                run_key="op_div",
                overwrite=False,
            ),
        ),
    )
    assert out.error is None, out.error
    assert any("predicted K*" in line for line in out.result["report"])
    assert out.result["saved_view"] == "op_div_plan" and pre.has_saved_view("op_div_plan")
    assert {t["name"] for t in out.result["error_vs_classes"]} >= {"N = 12 measured"}
    from transferscope.plots import save_diversity_png

    png = save_diversity_png(pre.load_run_results("op_div").summary, str(tmp_path / "d.png"))
    with open(png, "rb") as f:
        assert f.read(4) == b"\x89PNG"
    with pytest.raises(Exception, match="the K grid needs at least 3 points"):
        foo.execute_operator(
            f"{PLUGIN}/plan_class_diversity",
            ctx=dict(dataset=tgt, params=dict(influence_run="infl", num_points=2, run_key="bad")),
        )
