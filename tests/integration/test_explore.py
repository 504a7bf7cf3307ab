"""The panel's views (transferscope.explore) against the real database."""

import numpy as np
import pytest

from transferscope import TransferScopeError, explore
from transferscope.influence_run import influence_run_keys


@pytest.fixture()
def run(tiny_run):
    return tiny_run


def test_views_of_a_class(run):
    pre, tgt, results = run
    view = explore.class_samples(tgt, "infl", "class2")
    assert view._dataset.name == pre.name and len(view) == 10
    assert set(view.values("ground_truth.label")) == {"class2"}

    c = results.classes.index("class2")
    helped = explore.most_influenced(pre, "infl", "class2", k=5)
    assert helped._dataset.name == tgt.name
    expected = [results.target_ids[i] for i in np.argsort(-results.influence[c], kind="stable")[:5]]
    assert helped.values("id") == expected  # strongest first
    hurt = explore.most_influenced(tgt, "infl", "class2", k=3, helped=False)
    assert hurt.values("id") == [
        results.target_ids[i] for i in np.argsort(results.influence[c], kind="stable")[:3]
    ]
    assert influence_run_keys(pre) == influence_run_keys(tgt) == ["infl"]
    assert influence_run_keys(tgt, pretraining_only=True) == []


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda ds: explore.class_samples(ds, "infl", "no_such_class"),
            "'no_such_class' is not a pretraining class of this run",
        ),
        (
            lambda ds: explore.most_influenced(ds, "infl", "class1", k=0),
            "k must be a positive integer",
        ),
        (lambda ds: explore.class_samples(ds, "nope", "class1"), "has no run 'nope'"),
    ],
)
def test_bad_input_names_the_problem(run, call, message):
    _, tgt, _ = run
    with pytest.raises(TransferScopeError, match=message):
        call(tgt)


def test_panel_is_registered_with_the_plugin():
    import fiftyone.operators as foo

    panel = foo.get_operator("@transferscope/transferscope/class_influence_panel")
    assert isinstance(panel, foo.Panel) and panel.config.label == "Class influence"


def test_the_chart_draws_both_ends_of_a_long_ranking():
    from types import SimpleNamespace

    from transferscope.plots import influence_plotly
    from transferscope.runs import ClassInfluenceResults

    n = 1000
    ci = np.random.default_rng(0).normal(size=n)
    results = SimpleNamespace(
        classes=[f"c{i}" for i in range(n)],
        class_influence=ci,
        class_ci_low=ci - 0.1,
        class_ci_high=ci + 0.1,
        q_values=None,
    )
    ranked = [row[0] for row in ClassInfluenceResults.ranking(results)]
    results.ranking = lambda: ClassInfluenceResults.ranking(results)
    trace, layout = influence_plotly(results, top_n=40)
    assert trace["x"] == ranked[:40] + ranked[-40:] and trace["ids"] == trace["x"]
    assert len(trace["error_y"]["array"]) == 80 and "of 1000" in layout["title"]["text"]
    assert influence_plotly(results)[0]["x"] == ranked  # without top_n: every class
    assert influence_plotly(results, top_n=500)[0]["x"] == ranked
