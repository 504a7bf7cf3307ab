"""tag_classes / untag_classes / evaluate_curation: real database, real operators."""

import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest

import transferscope as ts
from transferscope import TransferScopeError
from transferscope.plots import curation_figure, curation_plotly, save_curation_png
from transferscope.runs import run_record

PLUGIN = "@transferscope/transferscope"


@pytest.fixture()
def influence_run(tiny_run):
    return tiny_run


def _snapshot(ds):
    return (
        sorted(map(tuple, map(sorted, ds.values("tags")))),
        ds.list_saved_views(),
        run_record(ds, "infl", "curation_tags"),
    )


def test_tag_view_and_undo_leave_other_tags_alone(influence_run):
    pre, tgt, results = influence_run
    worst = [results.classes[i] for i in np.argsort(results.class_influence, kind="stable")[:2]]
    # samples tagged before: one already 'remove' in a chosen class, one 'keepme'
    chosen_ids = pre.match(fo.ViewField("ground_truth.label") == worst[1]).values("id")
    pre.select(chosen_ids[0]).tag_samples("remove")
    pre.select(chosen_ids[1]).tag_samples("keepme")

    record = ts.tag_classes(pre, "infl", rule="most_harmful", k=2)
    assert record["classes"] == worst and record["num_samples"] == 20
    assert len(record["tagged_ids"]) == 19  # the pre-tagged sample is not claimed
    assert pre.match_tags("remove").count() == 20
    view = pre.load_saved_view("infl_curated")
    assert len(view) == 40 and not set(view.distinct("ground_truth.label")) & set(worst)
    stored = run_record(pre, "infl", "curation_tags")
    assert stored["classes"] == worst and stored["rule"] == "most_harmful"

    # tagging again replaces the previous choice
    ts.tag_classes(pre, "infl", rule="classes", classes=[worst[0]])
    assert pre.match_tags("remove").count() == 11  # 10 of the class + the pre-tagged one
    assert set(pre.match_tags("remove").distinct("ground_truth.label")) == set(worst)

    ts.untag_classes(pre, "infl")
    assert pre.match_tags("remove").values("id") == [chosen_ids[0]]  # tagged before: kept
    assert pre.match_tags("keepme").values("id") == [chosen_ids[1]]
    assert not pre.has_saved_view("infl_curated")
    with pytest.raises(TransferScopeError, match="no tagged classes to undo"):
        ts.untag_classes(pre, "infl")

    # deleting the run also removes the tags and the view it added
    ts.tag_classes(pre, "infl", rule="most_harmful", k=2)
    assert pre.match_tags("remove").count() == 20 and pre.has_saved_view("infl_curated")
    pre.delete_run("infl")
    assert pre.match_tags("remove").values("id") == [chosen_ids[0]]
    assert not pre.has_saved_view("infl_curated") and not pre.has_sample_field("infl_influence")


def test_bad_tagging_input_changes_nothing(influence_run):
    pre, tgt, results = influence_run
    before = _snapshot(pre)
    cases = [
        (dict(run_key="nope"), "has no run 'nope'"),
        (dict(rule="most_harmful", k=0), "k must be an integer from 1 to 4"),
        (dict(rule="most_harmful", k=7), "k must be an integer from 1 to 4"),
        (dict(rule="below_threshold", threshold=-10.0), "no class has influence below"),
        (dict(rule="classes", classes=["nope"]), "unknown pretraining class"),
        (dict(tag=" "), "tag must be a non-empty string"),
        (dict(rule="harmful_fdr", fdr_level=1.5), "fdr_level must be a finite number in"),
        (dict(rule="harmful_fdr", fdr_level=0), "fdr_level must be a finite number in"),
    ]
    for kw, message in cases:
        kw = {"run_key": "infl", "rule": "most_harmful", "k": 1, **kw}
        with pytest.raises(TransferScopeError, match=message):
            ts.tag_classes(pre, **kw)
        assert _snapshot(pre) == before
    with pytest.raises(TransferScopeError, match="is not the pretraining dataset of run"):
        ts.tag_classes(tgt, "infl", rule="most_harmful", k=1)
    assert tgt.count_sample_tags().keys() == {"train", "test"}
    pre.save_view("taken", pre.limit(3))
    with pytest.raises(TransferScopeError, match="did not create"):
        ts.tag_classes(pre, "infl", rule="most_harmful", k=1, view_name="taken")
    assert "remove" not in pre.count_sample_tags()


def test_counterfactual_end_to_end_is_stored_and_plotted(influence_run, tmp_path):
    pre, tgt, results = influence_run
    ts.tag_classes(pre, "infl", rule="most_harmful", k=1)
    calls = []
    summary = ts.evaluate_curation(
        tgt,
        "infl",
        max_seeds=2,
        round_seeds=2,
        sweep_ks=[2],
        progress=lambda d, t: calls.append((d, t)),
    )
    # full, curated (= the most harmful), random and helpful at k=1, k=2 x 3 orders:
    # 14 (mask, seed) rows at most, fewer where a random draw repeats another row
    done, total = calls[-1]
    assert done == total and 10 <= total <= 14
    assert summary["removed"] == [results.classes[int(np.argmin(results.class_influence))]]
    assert summary["rule"] == "tagged (most_harmful)"
    assert summary.describe() == ts.curation.describe_curation(summary)
    assert summary.plotly() == curation_plotly(summary)
    arms = {(c["arm"], c["k"]) for c in summary["cells"]}
    assert {("full", 0), ("curated", 1), ("random", 1), ("helpful_first", 2)} <= arms
    for c in summary["cells"]:
        assert len(c["per_seed"]) == 2 and c["accuracy"] == pytest.approx(np.mean(c["per_seed"]))
    for name in ("curated_vs_full", "curated_vs_random", "most_helpful_removed_vs_full"):
        assert summary[name]["num_pairs"] == 2
    # stored in the run on both datasets
    for ds in (pre, tgt):
        assert ts.curation_of(ds, "infl")["cells"] == summary["cells"]

    # a second call finds every model done: same numbers, nothing retrained
    calls.clear()
    again = ts.evaluate_curation(
        pre,
        "infl",
        max_seeds=2,
        round_seeds=2,
        sweep_ks=[2],
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [] and again["cells"] == summary["cells"]

    fig = curation_figure(summary)
    assert {t.name for t in fig.data} >= {"most harmful removed first", "random classes removed"}
    png = save_curation_png(summary, str(tmp_path / "curation.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    exe = os.path.join(os.path.dirname(sys.executable), "transferscope")
    out = str(tmp_path / "cli.png")
    proc = subprocess.run(
        [exe, "plot-curation", tgt.name, "infl", "--out", out],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    assert proc.returncode == 0 and os.path.getsize(out) > 1000, proc.stderr


def test_the_default_rule_tags_exactly_the_harmful_classes_at_the_fdr_level(influence_run):
    pre, tgt, results = influence_run
    q = pre.load_run_results("infl", cache=False).q_values
    expected = {
        c for c, v, qc in zip(results.classes, results.class_influence, q) if v < 0 and qc < 0.1
    }
    if expected:
        record = ts.tag_classes(pre, "infl")
        assert set(record["classes"]) == expected and record["rule"] == "harmful_fdr"
        assert record["q_value"] == [float(q[results.classes.index(c)]) for c in record["classes"]]
    else:  # four tiny models: usually nothing is settled, and the rule says so
        with pytest.raises(
            TransferScopeError, match="no class is harmful at false-discovery level 0.1"
        ):
            ts.tag_classes(pre, "infl")
        assert "remove" not in pre.count_sample_tags()


def test_each_curated_class_is_confirmed_or_not_by_its_own_retraining(influence_run):
    pre, tgt, results = influence_run
    summary = ts.evaluate_curation(
        tgt, "infl", rule="most_harmful", k=2, max_seeds=2, round_seeds=2, progress=False
    )
    each = summary["each_removed_vs_full"]
    assert [row["class"] for row in each] == summary["removed"]
    for row in each:
        assert row["num_pairs"] == 2 and len(row["ci95"]) == 2
    assert set(summary["confirmed"]) <= set(summary["removed"])
    assert summary["confirmed"] == [r["class"] for r in each if r["verdict"] == "confirmed"]
    assert any(line.startswith("  only ") for line in ts.curation.describe_curation(summary))
    none = ts.evaluate_curation(
        tgt,
        "infl",
        rule="most_harmful",
        k=2,
        max_seeds=2,
        round_seeds=2,
        progress=False,
        confirm_each=False,
    )
    assert none["each_removed_vs_full"] == [] and none["confirmed"] == []


def test_evaluation_refuses_an_incomplete_store(influence_run):
    pre, tgt, results = influence_run
    completed = np.load(os.path.join(results.config.output_dir, "completed.npy"), mmap_mode="r+")
    completed[1] = False
    completed.flush()
    with pytest.raises(TransferScopeError, match=r"incomplete \(3/4 models\)"):
        ts.evaluate_curation(tgt, "infl", rule="most_harmful", k=1, max_seeds=2, round_seeds=2)
    with pytest.raises(TransferScopeError, match="has no curation evaluation"):
        ts.curation_of(tgt, "infl")
    with pytest.raises(TransferScopeError, match="has no run 'other'"):
        ts.evaluate_curation(tgt, "other", max_seeds=2, round_seeds=2)


def test_operators_tag_view_undo_and_evaluate(influence_run):
    pre, tgt, results = influence_run
    worst = results.ranking()[-1][0]
    tag = foo.execute_operator(
        f"{PLUGIN}/tag_classes",
        ctx=dict(
            dataset=pre,
            params=dict(
                run_key="infl",
                action="tag",
                rule="classes",
                classes=[worst],
                tag="remove",
                view_name="curated",
            ),
        ),
    )
    assert tag.error is None, tag.error
    assert tag.result["classes"] == [worst] and tag.result["num_samples"] == 10
    assert set(pre.load_saved_view("curated").distinct("ground_truth.label")) == (
        set(results.classes) - {worst}
    )

    ev = foo.execute_operator(
        f"{PLUGIN}/evaluate_curation",
        ctx=dict(
            dataset=tgt,
            params=dict(
                run_key="infl", rule="tagged", max_seeds=2, round_seeds=2, sweep=False, device="cpu"
            ),
        ),
    )
    assert ev.error is None, ev.error
    assert any("curated - full" in line for line in ev.result["report"])
    assert {t["name"] for t in ev.result["accuracy_vs_removed"]} >= {"random classes removed"}

    undo = foo.execute_operator(
        f"{PLUGIN}/tag_classes", ctx=dict(dataset=pre, params=dict(run_key="infl", action="undo"))
    )
    assert undo.error is None, undo.error
    assert "remove" not in pre.count_sample_tags() and not pre.has_saved_view("curated")

    # the form refuses a rule that selects nothing, before anything runs
    with pytest.raises(Exception, match="no class has influence below"):
        foo.execute_operator(
            f"{PLUGIN}/tag_classes",
            ctx=dict(
                dataset=pre,
                params=dict(run_key="infl", action="tag", rule="below_threshold", threshold=-5.0),
            ),
        )
    assert "remove" not in pre.count_sample_tags()


def test_evaluation_and_planning_refuse_datasets_changed_since_the_run(influence_run):
    from transferscope.diversity import plan_class_diversity

    pre, tgt, results = influence_run
    first = pre.first()
    pre.add_sample(
        fo.Sample(filepath=first.filepath, ground_truth=fo.Classification(label="a_new_class"))
    )
    with pytest.raises(TransferScopeError, match="changed since it was computed.*curation"):
        ts.evaluate_curation(tgt, "infl", rule="most_harmful", k=1, max_seeds=2, round_seeds=2)
    with pytest.raises(TransferScopeError, match="changed since it was computed.*diversity"):
        plan_class_diversity(tgt, "infl", budgets=[12, 20], full_budget=30)
    assert not pre.has_saved_view("diversity_plan") and "diversity" not in pre.list_runs()


def test_the_check_stops_at_a_look_and_a_second_call_trains_nothing(influence_run):
    pre, tgt, results = influence_run
    kwargs = dict(rule="most_harmful", k=1, max_seeds=6, round_seeds=2, confirm_each=False)
    calls = []
    summary = ts.evaluate_curation(
        tgt, "infl", progress=lambda d, t: calls.append((d, t)), **kwargs
    )
    n = summary["num_seeds"]
    assert n in (2, 4, 6) and summary["stopping_rule"]["max_seeds"] == 6
    # stopped early only when the verdicts that decide the curation were decided
    assert summary["curated_vs_full"]["verdict"] != "undecided" or n == 6
    full = next(c for c in summary["cells"] if c["arm"] == "full")
    assert len(full["per_seed"]) == n
    # progress counts against the models of the whole budget, and never runs back
    done = [d for d, _ in calls]
    totals = {t for _, t in calls}
    assert done == sorted(done) and len(totals) == 1 and max(done) <= totals.pop()
    again = []
    repeat = ts.evaluate_curation(tgt, "infl", progress=lambda d, t: again.append(d), **kwargs)
    assert again == [] and repeat["num_seeds"] == n
    assert repeat["curated_vs_full"] == summary["curated_vs_full"]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(max_seeds=2, round_seeds=4), "max_seeds must be an integer >= 4"),
        (dict(min_effect=-0.01), r"min_effect must be a finite number in \[0, inf\)"),
        (dict(alpha=0.5), r"alpha must be a finite number in \(0, 0.5\)"),
        (dict(alpha=0.0), r"alpha must be a finite number in \(0, 0.5\)"),
        (dict(outcome="loss"), "outcome must be one of"),
    ],
)
def test_bad_stopping_rules_are_refused_before_anything_changes(influence_run, kw, message):
    pre, tgt, results = influence_run
    out = results.config.output_dir

    def state():
        files = sorted(
            os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
        )
        return files, run_record(tgt, "infl", "curation"), run_record(pre, "infl", "curation")

    before = state()
    with pytest.raises(TransferScopeError, match=message):
        ts.evaluate_curation(tgt, "infl", rule="most_harmful", k=1, **kw)
    with pytest.raises(TransferScopeError, match=message):
        ts.explain_failures(tgt, "infl", key="bad_rule", **kw)
    assert state() == before
    assert "bad_rule" not in fo.load_dataset(tgt.name).list_runs()


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(alpha=0.7), "alpha must be"),
        (dict(max_seeds=2), "max_seeds must be an integer >= 4"),
        (dict(min_effect_points=-1.0), "min_effect must be"),
    ],
)
def test_the_curation_operator_refuses_a_bad_stopping_rule_and_writes_nothing(
    influence_run, params, message
):
    from fiftyone.operators.executor import ExecutionError

    pre, tgt, results = influence_run
    before = run_record(tgt, "infl", "curation")
    with pytest.raises(ExecutionError, match=message):
        foo.execute_operator(
            f"{PLUGIN}/evaluate_curation",
            ctx=dict(
                dataset=tgt,
                params=dict(run_key="infl", rule="most_harmful", k=1, sweep=False, **params),
            ),
        )
    assert run_record(tgt, "infl", "curation") == before
