"""find_subpopulations and explain_failures: the compute part on planted data, the SDK
and the operators against the real database and FiftyOne's operator machinery."""

import shutil

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from transferscope.compute import subpopulations as sp

import transferscope as ts
from transferscope import TransferScopeError

CLASSES = [f"c{i}" for i in range(12)]


def planted_z(n=40, noise=1.0, seed=0):
    """z-scores of n samples: half helped by class 3, half by class 7, plus noise."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    z = rng.normal(0, noise, (n, len(CLASSES)))
    z[truth == 0, 3] += 4
    z[truth == 1, 7] += 4
    return z, truth


@pytest.mark.parametrize("k", [None, 2])
def test_grouping_recovers_planted_subpopulations(k):
    z, truth = planted_z()
    grouping = sp.group_by_influence(z, CLASSES, k=k)
    assert adjusted_rand_score(truth, grouping.labels) == 1.0
    assert sorted(grouping.names) == ["c3", "c7"]
    named = np.array(grouping.names)[grouping.labels]
    assert (named[truth == 0] == "c3").all() and (named[truth == 1] == "c7").all()
    if k is None:  # the top class's z-score
        assert np.allclose(grouping.strength, z.max(axis=1))
    else:  # silhouettes: well separated groups
        assert grouping.strength.min() > 0


def test_grouping_without_structure_is_not_recovered():
    """The test above can fail: pure noise gives groups unrelated to any truth."""
    z, truth = planted_z(noise=1.0)
    z[:, [3, 7]] = np.random.default_rng(1).normal(0, 1, (len(z), 2))
    assert abs(adjusted_rand_score(truth, sp.group_by_influence(z, CLASSES, k=2).labels)) < 0.3


def test_grouping_bad_input():
    z, _ = planted_z(n=4)
    with pytest.raises(ValueError, match="only 4 sample"):
        sp.group_by_influence(z, CLASSES, k=5)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        sp.group_by_influence(z, CLASSES, k=1)
    with pytest.raises(ValueError, match=r"z must be \(n, 12\)"):
        sp.group_by_influence(z[:, :5], CLASSES)


def test_failure_influence_finds_the_class_that_causes_the_wrong_answer():
    rng = np.random.default_rng(0)
    masks = rng.random((64, 6)) < 0.5
    # target 0: models that saw class 2 answer 1 (wrong), others answer 0 (right)
    predictions = np.zeros((64, 3), dtype=int)
    predictions[masks[:, 2], 0] = 1
    predictions[:, 1] = rng.integers(0, 3, 64)  # noise
    predictions[masks[:, 4], 2] = 2
    infl, z = sp.failure_influence(masks, predictions, np.array([1, 2, 2]))
    assert infl[2, 0] == pytest.approx(1.0) and z[:, 0].argmax() == 2
    assert z[:, 2].argmax() == 4
    table = sp.culprit_summary(z, list("abcdef"), top_k=1)
    assert {table[0]["class"], table[1]["class"]} == {"c", "e"}
    assert table[0]["top1"] == 1 and sum(r["top1"] for r in table) == 3


def test_wrong_answers_takes_the_majority():
    predictions = np.array([[0, 1, 2], [1, 1, 2], [1, 0, 2]])
    modal, share = sp.wrong_answers(predictions, np.array([0, 1, 2]))
    assert modal.tolist() == [1, 1, 2] and np.allclose(share, [2 / 3, 2 / 3, 1])


def test_culprit_check_plan_and_flip_counts():
    masks, seeds, randoms = sp.plan_culprit_check(10, culprit=4, num_seeds=3)
    assert masks.shape == (9, 10) and seeds.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert masks[0::3].all() and not masks[1::3, 4].any() and masks[1::3].sum() == 27
    assert (randoms != 4).all() and not masks[2::3][np.arange(3), randoms].any()
    # 2 failures; seed 0: full wrong on both, culprit removed fixes both, random fixes none
    correct = np.array([[0, 0], [1, 1], [0, 0], [1, 0], [1, 1], [0, 0], [0, 0], [0, 1], [1, 0]])
    flips = sp.flip_counts(correct, 3)
    assert flips["full"]["correct"] == pytest.approx(1 / 3)
    assert flips["culprit_removed"]["fixed"] == pytest.approx(4 / 3)
    assert flips["culprit_removed"]["per_seed_fixed"] == [2, 1, 1]
    assert flips["random_removed"]["fixed"] == pytest.approx(1 / 3)
    assert flips["random_removed"]["broken"] == pytest.approx(1 / 3)


@pytest.fixture()
def run(make_tiny_run):
    return make_tiny_run(num_models=8)


def _our_fields(dataset):
    return sorted(f for f in dataset.get_field_schema() if "subpops" in f or "failures" in f)


def test_find_subpopulations_writes_fields_views_and_run(run):
    pre, tgt, results = run
    summary = ts.find_subpopulations(tgt, "infl", k=2)
    test = tgt.match_tags("test")
    labels = test.values("infl_subpops.label")
    assert all(l.split(" / ")[0] == gt for l, gt in zip(labels, test.values("ground_truth.label")))
    assert sum(g["size"] for groups in summary["classes"].values() for g in groups) == len(test)
    assert summary.describe() == ts.subpopulations.describe_subpopulations(summary)
    traces, _ = summary.plotly()
    assert sum(sum(t["y"]) for t in traces) == len(test)
    assert all(len(groups) <= 2 for groups in summary["classes"].values())
    assert not tgt.match_tags("train").exists("infl_subpops")
    for name in summary["saved_views"]:  # each view holds exactly its subpopulation
        label = name[len("infl_subpops ") :]
        assert set(tgt.load_saved_view(name).values("infl_subpops.label")) == {label}
    acc = dict(zip(test.values("id"), test.values("infl_accuracy")))
    group = summary["classes"]["t0"][0]
    members = test.match(fo.ViewField("infl_subpops.label") == group["name"]).values("id")
    assert group["accuracy"] == pytest.approx(np.mean([acc[i] for i in members]), abs=1e-6)
    # the run owns what it wrote
    tgt.delete_run("infl_subpops")
    assert _our_fields(tgt) == [] and not tgt.list_saved_views()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda tgt: ts.find_subpopulations(tgt, "nope"), "has no run 'nope'"),
        (lambda tgt: ts.find_subpopulations(tgt, "infl", k=7), "'t0' has only 6 test sample"),
        (lambda tgt: ts.find_subpopulations(tgt, "infl", k=1), "k must be an integer >= 2"),
        (lambda tgt: ts.find_subpopulations(tgt, "infl", target_classes=["t9"]), "unknown target"),
        (lambda tgt: ts.find_subpopulations(tgt, "infl", key="bad key"), "Python identifier"),
        (
            lambda tgt: ts.explain_failures(tgt, "infl", pred_field="infl_accuracy"),
            "not a Classification field",
        ),
        (lambda tgt: ts.explain_failures(tgt, "infl", pred_field="missing"), "does not exist"),
        (lambda tgt: ts.explain_failures(tgt, "infl", top_k=0), "top_k must be a positive"),
    ],
)
def test_bad_input_names_the_problem_and_writes_nothing(run, call, message):
    _, tgt, _ = run
    before = (tgt.list_runs(), tgt.list_saved_views())
    with pytest.raises(TransferScopeError, match=message):
        call(tgt)
    assert (tgt.list_runs(), tgt.list_saved_views()) == before and _our_fields(tgt) == []


def test_a_run_without_its_stored_influence_is_refused(run):
    _, tgt, results = run
    shutil.rmtree(results.config.output_dir)
    for call in (ts.find_subpopulations, ts.explain_failures):
        with pytest.raises(TransferScopeError, match="results store of run 'infl' is missing"):
            call(tgt, "infl")
    assert _our_fields(tgt) == []


def test_a_run_that_is_not_an_influence_run_is_refused(run):
    _, tgt, _ = run
    ts.detect_leakage(tgt, influence_key="infl", key="leaks")
    with pytest.raises(TransferScopeError, match="not a transferscope class-influence run"):
        ts.find_subpopulations(tgt, "leaks")


def test_no_failures_says_so_and_writes_nothing(run):
    _, tgt, _ = run
    tgt.clone_sample_field("ground_truth", "perfect")
    summary = ts.explain_failures(tgt, "infl", pred_field="perfect")
    assert summary["num_failures"] == 0 and "no misclassified" in summary["message"]
    assert "infl_failures" not in tgt.list_runs() and _our_fields(tgt) == []


def test_explain_failures_with_a_prediction_field_and_the_counterfactual(run):
    _, tgt, results = run
    test = tgt.match_tags("test")
    # a prediction field: every t0 test sample predicted t1, the rest right
    preds = {
        i: fo.Classification(label="t1" if gt == "t0" else gt)
        for i, gt in zip(test.values("id"), test.values("ground_truth.label"))
    }
    test.set_values("pred", preds, key_field="id")
    summary = ts.explain_failures(
        tgt, "infl", pred_field="pred", top_k=2, max_seeds=2, round_seeds=2, progress=False
    )
    assert summary["num_failures"] == 6
    assert summary.describe()[0].startswith("6 of ")
    assert summary.plotly()[0][0]["x"] == [row["class"] for row in summary["culprits"][:12]]
    failures = tgt.exists("infl_failures_wrong")
    assert set(failures.values("ground_truth.label")) == {"t0"}
    assert set(failures.values("infl_failures_wrong.label")) == {"t1"}
    assert all(len(c.classifications) == 2 for c in failures.values("infl_failures_culprits"))
    top = [c.classifications[0].label for c in failures.values("infl_failures_culprits")]
    assert summary["culprits"][0]["top1"] == max(top.count(c) for c in set(top))
    check = summary["counterfactual"]
    assert check["culprit"] == summary["top_culprit"] and check["num_seeds"] == 2
    assert 1 <= check["blamed_failures"] <= 6
    for arm in ("culprit_removed", "random_removed"):
        assert 0 <= check["on_blamed"][arm]["fixed"] <= check["blamed_failures"]
    assert len(tgt.load_saved_view("infl_failures_failures")) == 6
    # resumable: a second call trains nothing new and gives the same counts
    again = ts.explain_failures(
        tgt,
        "infl",
        pred_field="pred",
        top_k=2,
        max_seeds=2,
        round_seeds=2,
        progress=False,
        overwrite=True,
    )
    assert again["counterfactual"] == check
    tgt.delete_run("infl_failures")
    assert _our_fields(tgt) == [] and "infl_failures_failures" not in tgt.list_saved_views()


def test_both_operators_through_fiftyones_operator_machinery(run):
    _, tgt, _ = run
    uri = "@transferscope/transferscope/"
    out = foo.execute_operator(
        uri + "find_subpopulations",
        ctx=dict(
            dataset=tgt,
            params=dict(
                influence_run="infl", mode="k", k=2, target_classes="t0, t2", run_key="ops_subpops"
            ),
        ),
    )
    assert out.error is None, out.error
    assert len(out.result["report"]) == 2 and out.result["sizes"]
    classes = tgt.load_run_results("infl").classes
    found = set(tgt.distinct("ops_subpops.label"))
    assert {f.split(" / ")[0] for f in found} == {"t0", "t2"}
    assert found <= {f"{c} / {p}" for c in ("t0", "t2") for p in classes}
    out = foo.execute_operator(
        uri + "explain_failures",
        ctx=dict(
            dataset=tgt,
            params=dict(
                influence_run="infl",
                pred_field="(the run's models)",
                top_k=2,
                check_top=True,
                max_seeds=2,
                round_seeds=2,
                device="cpu",
                executor="local",
                run_key="ops_failures",
            ),
        ),
    )
    assert out.error is None, out.error
    n = out.result["num_failures"]
    assert n == len(tgt.exists("ops_failures_culprits")) and out.result["report"]
    with pytest.raises(Exception, match="k must be at least 2"):  # the form refuses it
        foo.execute_operator(
            uri + "find_subpopulations",
            ctx=dict(
                dataset=tgt, params=dict(influence_run="infl", mode="k", k=1, run_key="bad_subpops")
            ),
        )
    assert not tgt.has_sample_field("bad_subpops")
