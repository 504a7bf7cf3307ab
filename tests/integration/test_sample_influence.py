"""compute_sample_influence: which pretraining images help or hurt, on the tiny
datasets, through the SDK and FiftyOne's operator machinery."""

import os

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.delegated as food
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionRunState
from helpers.delegated import run_with_worker
from helpers.tiny import TINY_KWARGS

import transferscope as ts
from transferscope import explore
from transferscope.runs import run_record

URI = "@transferscope/transferscope/compute_sample_influence"
# the tiny run's protocol, without its class-level design
PROTOCOL = {k: v for k, v in TINY_KWARGS.items() if k not in ("num_models", "holdout_models")}


def _store_files(root):
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_a_run_from_a_class_run_writes_scores_ranks_and_top_images(tiny_run, tmp_path):
    pre, tgt, class_results = tiny_run
    out = str(tmp_path / "samples")
    results = ts.compute_sample_influence(
        pre,
        tgt,
        "samp",
        influence_key="infl",
        num_models=2,
        top_k=4,
        holdout_models=3,
        output_dir=out,
        progress=False,
    )
    scores = results.scores()
    assert isinstance(scores, np.memmap) and scores.shape == (60, 18)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    # the matrix is in the store, not in the run's results
    assert "scores" not in tgt.get_run_info("samp").serialize().get("results", {})
    assert {"pretrain_ids", "target_ids", "metrics"} <= set(results.attributes())
    assert not any("score" in a for a in results.attributes())

    # pretraining side: the mean score over the test split, and its rank
    by_id = dict(zip(pre.values("id"), zip(pre.values("samp_score"), pre.values("samp_rank"))))
    overall = np.asarray(scores, dtype=np.float64).mean(axis=1)
    got = np.array([by_id[i][0] for i in results.pretrain_ids])
    np.testing.assert_allclose(got, overall, rtol=1e-9)
    ranks = np.array([by_id[i][1] for i in results.pretrain_ids])
    assert sorted(ranks) == list(range(1, 61)) and ranks[np.argmax(overall)] == 1
    assert pre.sort_by("samp_score", reverse=True).first()["samp_rank"] == 1

    # target side: each test sample's most helpful and most harmful images
    test = tgt.match_tags("test")
    assert (
        test.exists("samp_helpful").count() == 18
        and not tgt.match_tags("train").exists("samp_helpful").count()
    )
    labels = dict(zip(pre.values("id"), pre.values("ground_truth.label")))
    for t, sample_id in enumerate(results.target_ids[:5]):
        sample = tgt[sample_id]
        column = np.asarray(scores[:, t], dtype=np.float64)
        for field, order in (("samp_helpful", -column), ("samp_harmful", column)):
            top = sample[field].classifications
            want = [results.pretrain_ids[i] for i in np.argsort(order, kind="stable")[:4]]
            assert [c.sample_id for c in top] == want
            assert [c.label for c in top] == [labels[i] for i in want]
            top_rows = np.argsort(order, kind="stable")[:4]
            np.testing.assert_allclose([c.score for c in top], column[top_rows], rtol=1e-6)
    # the App can filter on the scores
    assert "samp_helpful.classifications.score" in tgt.get_field_schema(flat=True)

    # tied to the class level: the summed image scores per class against the class influence
    from scipy.stats import spearmanr

    classes = list(class_results.classes)
    labels = pre.select(results.pretrain_ids, ordered=True).values("ground_truth.label")
    rows = np.array([classes.index(c) for c in labels])
    summed = np.bincount(rows, weights=np.asarray(scores, np.float64).sum(axis=1))
    rho = spearmanr(summed, class_results.class_influence).statistic
    assert results.metrics["class_spearman"] == pytest.approx(rho)
    # reliability: the example-level datamodeling score on 3 models on random halves
    assert np.isfinite(results.metrics["lds"]) and results.metrics["holdout_models"] == 3
    assert results.config.influence_key == "infl" and results.config.epochs == 1

    # deleting the run deletes its fields, and with its last side, its store
    files = _store_files(out)
    assert any(f.endswith(".npy") for f in files) and any(f.endswith(".pt") for f in files)
    tgt.delete_run("samp")
    assert not tgt.has_sample_field("samp_helpful") and os.path.exists(results.config.scores_path)
    pre.delete_run("samp")
    assert not pre.has_sample_field("samp_score") and not pre.has_sample_field("samp_rank")
    assert not os.path.exists(results.config.output_dir)
    assert "infl" in tgt.list_runs()  # the class-level run is untouched


def test_a_run_without_a_class_run_takes_the_class_runs_arguments_and_resumes(
    tiny_datasets, tmp_path
):
    pre, tgt = tiny_datasets
    out = str(tmp_path / "samples")
    calls = []
    first = ts.compute_sample_influence(
        pre,
        tgt,
        "s1",
        num_models=2,
        holdout_models=0,
        output_dir=out,
        progress=lambda d, t: calls.append((d, t)),
        **PROTOCOL,
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]  # two models, then the scoring
    assert "class_spearman" not in first.metrics and first.config.width == 4
    # a lost model and a lost score file come back the same; the other model is kept
    models = os.path.join(first.config.output_dir, "models")
    kept = os.path.join(models, "model-0000.pt")
    kept_mtime = os.stat(kept).st_mtime_ns
    before = np.array(first.scores())
    os.remove(os.path.join(models, "model-0001.pt"))
    os.remove(first.config.scores_path)
    calls.clear()
    again = ts.compute_sample_influence(
        pre,
        tgt,
        "s1",
        num_models=2,
        holdout_models=0,
        output_dir=out,
        overwrite=True,
        progress=lambda d, t: calls.append((d, t)),
        **PROTOCOL,
    )
    assert calls == [(2, 3), (3, 3)] and os.stat(kept).st_mtime_ns == kept_mtime
    np.testing.assert_array_equal(np.array(again.scores()), before)


def _nothing_written(pre, tgt, out):
    for ds in (pre, tgt):
        ds.reload()
        assert "bad" not in ds.list_runs()
        assert not any(f.startswith("bad_") for f in ds.get_field_schema())
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(influence_key="nope"), "has no run 'nope'"),
        (dict(influence_key="infl", proj_dim=0), "proj_dim"),
        (dict(influence_key="infl", damping=-0.1), "damping"),
        (dict(influence_key="infl", loss_weighting="1-p"), "loss_weighting must be one of"),
        (dict(influence_key="infl", num_models=0), "num_models"),
        (dict(influence_key="infl", holdout_models=2), "holdout_models must be 0"),
        (dict(influence_key="infl", top_k=61), "top_k is 61 but the pretraining set has 60"),
        (dict(influence_key="infl", epochs=3), "with influence_key='infl' the label fields"),
        (dict(influence_key="infl", estimator="auto"), "unknown argument"),
        (dict(train_split="nosuchtag"), "nosuchtag"),
    ],
)
def test_bad_input_is_refused_by_name_and_changes_nothing(tiny_run, tmp_path, kwargs, message):
    pre, tgt, _ = tiny_run
    out = str(tmp_path / "bad_store")
    with pytest.raises(ts.TransferScopeError, match=message):
        ts.compute_sample_influence(pre, tgt, "bad", output_dir=out, progress=False, **kwargs)
    _nothing_written(pre, tgt, out)


def test_the_operator_runs_immediately_from_a_class_run(tiny_run):
    pre, tgt, _ = tiny_run
    params = dict(influence_key="infl", num_models=2, top_k=3, holdout_models=0, run_key="opsamp")
    result = foo.execute_operator(URI, ctx=dict(dataset=pre, params=params))
    assert result.error is None, result.error
    assert result.result["run_key"] == "opsamp" and result.result["num_models"] == 2
    assert pre.has_sample_field("opsamp_score") and tgt.has_sample_field("opsamp_helpful")
    assert len(tgt.match_tags("test").first()["opsamp_harmful"].classifications) == 3
    with pytest.raises(Exception, match="proj_dim"):
        foo.execute_operator(
            URI, ctx=dict(dataset=pre, params=dict(params, run_key="opbad", proj_dim=0))
        )
    assert "opbad" not in pre.list_runs()


@pytest.mark.slow
def test_the_operator_runs_delegated_by_default_through_a_worker(tiny_run):
    pre, tgt, _ = tiny_run
    pre.persistent = tgt.persistent = True  # the worker loads them by name
    params = dict(influence_key="infl", num_models=2, holdout_models=3, run_key="deleg")
    queued = foo.execute_operator(
        URI, ctx=dict(dataset=tgt, params=params), request_delegation=True
    )
    assert queued.delegated
    dos = food.DelegatedOperationService()
    (op,) = [o for o in dos.list_operations(dataset_name=tgt.name) if o.operator == URI]
    op, log = run_with_worker(op.id)
    assert op.run_state == ExecutionRunState.COMPLETED, (op.run_state, log[-3000:])
    assert op.status.progress == pytest.approx(1.0)
    tgt.reload()
    assert tgt.match_tags("test").exists("deleg_helpful").count() == 18


def _sample_run_from_infl(pre, tgt, key, output_dir, num_models):
    return ts.compute_sample_influence(
        pre,
        tgt,
        key,
        influence_key="infl",
        num_models=num_models,
        holdout_models=0,
        output_dir=str(output_dir),
        progress=False,
    )


@pytest.fixture()
def sample_run(tiny_run, tmp_path):
    pre, tgt, _ = tiny_run
    return pre, tgt, _sample_run_from_infl(pre, tgt, "samp", tmp_path / "samples", 2)


def test_tagging_the_most_harmful_images_and_checking_it_by_retraining(sample_run):
    pre, tgt, results = sample_run
    record = ts.tag_samples(pre, "samp", k=3)
    lowest = [
        i for i, _ in sorted(zip(pre.values("id"), pre.values("samp_score")), key=lambda p: p[1])
    ]
    assert record["sample_ids"] == lowest[:3] and record["num_samples"] == 3
    assert sorted(pre.match_tags("remove_image").values("id")) == sorted(lowest[:3])
    assert len(pre.load_saved_view("samp_curated")) == 57
    # tagging again replaces the choice
    ts.tag_samples(
        pre, "samp", rule="below_threshold", threshold=sorted(pre.values("samp_score"))[1]
    )
    assert pre.match_tags("remove_image").values("id") == [lowest[0]]

    calls = []
    summary = ts.evaluate_curation(
        tgt, "samp", max_seeds=2, round_seeds=2, progress=lambda d, t: calls.append(d)
    )
    assert calls[-1] == 6  # 2 seeds x (full, curated, random)
    assert summary["num_removed"] == 1 and summary["rule"] == "tagged (below_threshold)"
    assert [c["arm"] for c in summary["cells"]] == ["full", "curated", "random"]
    assert summary["num_seeds"] == 2 and all(np.isfinite(c["accuracy"]) for c in summary["cells"])
    assert summary["curated_vs_random"]["num_pairs"] == 2
    assert any("curated - random" in line for line in summary.describe())
    assert tgt.get_run_info("samp").config.curation["num_removed"] == 1
    # the same call again trains nothing
    calls.clear()
    ts.evaluate_sample_curation(
        tgt, "samp", max_seeds=2, round_seeds=2, progress=lambda d, t: calls.append(d)
    )
    assert calls == []
    # deleting the run takes its tags and saved view with it
    pre.delete_run("samp")
    assert not pre.match_tags("remove_image").count() and not pre.has_saved_view("samp_curated")


def test_a_given_set_of_images_is_checked_by_retraining(sample_run):
    pre, tgt, results = sample_run
    chosen = list(results.pretrain_ids[5:9])
    summary = ts.evaluate_sample_curation(
        tgt,
        "samp",
        max_seeds=2,
        round_seeds=2,
        sample_ids=(i for i in chosen),  # any iterable, read once
    )
    assert summary["num_removed"] == 4 and summary["rule"] == "given images"
    assert tgt.get_run_info("samp").config.curation["num_removed"] == 4


@pytest.mark.parametrize(
    "sample_ids, rule, message",
    [
        ([], None, "sample_ids is empty"),
        ("abc", None, "must be a list"),
        (7, None, "must be a list"),
        ([7], None, "must be a list"),
        (["0" * 24], None, "not pretraining images of run 'samp'"),
        (["dup", "dup"], None, "more than once"),
        (["x"], "most_harmful", "not both"),
    ],
)
def test_a_bad_given_set_is_refused_and_nothing_is_trained(sample_run, sample_ids, rule, message):
    pre, tgt, results = sample_run
    if sample_ids == ["dup", "dup"]:
        sample_ids = [results.pretrain_ids[0]] * 2
    with pytest.raises(ts.TransferScopeError, match=message):
        ts.evaluate_sample_curation(
            tgt, "samp", rule=rule, max_seeds=2, round_seeds=2, sample_ids=sample_ids
        )
    with pytest.raises(ts.TransferScopeError, match="every pretraining image"):
        ts.evaluate_sample_curation(
            tgt, "samp", max_seeds=2, round_seeds=2, sample_ids=results.pretrain_ids
        )
    assert run_record(tgt, "samp", "curation") is None
    assert not os.path.exists(os.path.join(tgt.get_run_info("samp").config.output_dir, "curation"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=60), "k must be"),
        (dict(rule="most_helpful", k=2), "rule must be one of"),
        (dict(rule="below_threshold", threshold=-1e9), "no pretraining image scores below"),
        (dict(tag=" x"), "tag must be"),
    ],
)
def test_bad_image_tagging_is_refused_and_changes_nothing(sample_run, kwargs, message):
    pre, _, _ = sample_run
    kwargs.setdefault("k", None)
    with pytest.raises(ts.TransferScopeError, match=message):
        ts.tag_samples(pre, "samp", **kwargs)
    assert not pre.match_tags("remove_image").count() and not pre.has_saved_view("samp_curated")


def test_image_tagging_refuses_a_class_run_and_the_target_side(sample_run):
    pre, tgt, _ = sample_run
    with pytest.raises(ts.TransferScopeError, match="not a transferscope sample-influence run"):
        ts.tag_samples(pre, "infl", k=2)
    with pytest.raises(ts.TransferScopeError, match="is not the pretraining dataset"):
        ts.tag_samples(tgt, "samp", k=2)


def test_the_tagging_operator_tags_the_most_harmful_images(sample_run):
    pre, _, _ = sample_run
    uri = "@transferscope/transferscope/tag_samples"
    params = dict(influence_key="samp", rule="most_harmful", k=4, tag="drop")
    result = foo.execute_operator(uri, ctx=dict(dataset=pre, params=params))
    assert result.error is None, result.error
    assert result.result == {"num_samples": 4, "tag": "drop", "view_name": "samp_curated"}
    assert pre.match_tags("drop").count() == 4
    with pytest.raises(Exception, match="k must be"):
        foo.execute_operator(uri, ctx=dict(dataset=pre, params=dict(params, k=0)))
    assert pre.match_tags("drop").count() == 4


# --- looking at a run: from a target sample to its images, and the images by score ---


def test_views_from_a_target_sample_to_its_images_and_of_the_images_by_score(sample_run):
    pre, tgt, results = sample_run
    sample = tgt[results.target_ids[3]]
    helped = explore.attributed_images(tgt, "samp", sample.id)
    assert helped._dataset.name == pre.name
    assert helped.values("id") == [c.sample_id for c in sample["samp_helpful"].classifications]
    hurt = explore.attributed_images(tgt, "samp", sample.id, helpful=False, k=2)
    assert hurt.values("id") == [c.sample_id for c in sample["samp_harmful"].classifications][:2]
    column = np.asarray(results.scores()[:, 3], dtype=np.float64)
    assert hurt.values("id")[0] == results.pretrain_ids[int(np.argmin(column))]

    worst_first = explore.images_by_score(pre, "samp")
    scores = worst_first.values("samp_score")
    assert len(scores) == 60 and scores == sorted(scores)
    assert explore.images_by_score(pre, "samp", helpful=True).first()["samp_rank"] == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda pre, tgt: explore.attributed_images(pre, "samp", "x"), "pretraining dataset"),
        (lambda pre, tgt: explore.images_by_score(tgt, "samp"), "target dataset"),
        (lambda pre, tgt: explore.attributed_images(tgt, "nope", "x"), "has no run 'nope'"),
        # a file path is not an id (FiftyOne would look it up as one)
        (
            lambda pre, tgt: explore.attributed_images(tgt, "samp", tgt.first().filepath),
            "sample_id must be a sample's id",
        ),
        (
            lambda pre, tgt: explore.attributed_images(
                tgt, "samp", tgt.match_tags("train").first().id
            ),
            "is not a target test sample of run 'samp'",
        ),
        (lambda pre, tgt: explore.attributed_images(tgt, "samp", pre.first().id), "not a"),
        (
            lambda pre, tgt: explore.attributed_images(
                tgt, "samp", tgt.match_tags("test").first().id, k=0
            ),
            "k must be a positive integer",
        ),
    ],
)
def test_bad_view_requests_name_the_problem(sample_run, call, message):
    pre, tgt, _ = sample_run
    with pytest.raises(ts.TransferScopeError, match=message):
        call(pre, tgt)


PANEL = "@transferscope/transferscope/sample_influence_panel"


def _panel_event(dataset, method, state=None, **ctx):
    """One panel event through FiftyOne's operator machinery: ``(state, triggered ops)``."""
    state = dict(state or {})
    params = {"__method__": method, "panel_id": "panel1", "panel_state": state}
    result = foo.execute_operator(PANEL, ctx=dict(dataset=dataset, params=params, **ctx))
    assert result.error is None, result.error
    requests = [r.to_json() for r in result.executor._requests]
    return state, {r["operator_uri"]: r.get("params") for r in requests}


def test_the_panel_goes_from_a_selected_target_sample_to_its_images(sample_run):
    pre, tgt, _ = sample_run
    test_id = tgt.match_tags("test").first().id
    state, _ = _panel_event(tgt, "on_load", selected=[test_id])
    assert state["run_key"] == "samp" and state["role"] == "target"
    assert state["sample_id"] == test_id
    sample = tgt[test_id]
    top = sample["samp_helpful"].classifications[0]
    assert f"| {top.label} | {top.score:+.3g} |" in state["table"]

    # another sample opened in the modal is explained; closing it keeps it
    other = tgt.match_tags("test").skip(1).first().id
    state, _ = _panel_event(tgt, "on_change_current_sample", state, current_sample=other)
    assert state["sample_id"] == other
    state, _ = _panel_event(tgt, "on_change_current_sample", state)
    assert state["sample_id"] == other
    # two selected samples choose none: the last one stays; one selected is explained
    state, _ = _panel_event(tgt, "on_change_selected", state, selected=[test_id, other])
    assert state["sample_id"] == other
    state, _ = _panel_event(tgt, "on_change_selected", state, selected=[test_id])
    assert state["sample_id"] == test_id
    # a train sample has no scores: the panel says so
    train_id = tgt.match_tags("train").first().id
    said, _ = _panel_event(tgt, "on_change_selected", dict(state), selected=[train_id])
    assert said["sample_id"] == test_id and "not a test sample" in said["message"]

    # "show its most harmful images": the pretraining dataset opens ...
    state, ops = _panel_event(tgt, "show_harmful", state, current_sample=test_id)
    assert ops["open_dataset"] == {"dataset": pre.name}
    assert state["pending"] == {
        "dataset": pre.name,
        "target_dataset": tgt.name,
        "sample_id": test_id,
        "helpful": False,
    }
    # ... and once it is open, the view shows them, most harmful first
    state, ops = _panel_event(pre, "on_change_dataset", state)
    assert state["pending"] is None and state["role"] == "pretraining"
    want = [c.sample_id for c in sample["samp_harmful"].classifications]
    shown = ops["set_view"]["view"]
    assert fo.DatasetView._build(pre, shown).values("id") == want
    assert "most harmful images for target sample" in state["message"]

    # on the pretraining grid: the images sorted by score
    state, ops = _panel_event(pre, "sort_helpful_first", state)
    view = fo.DatasetView._build(pre, ops["set_view"]["view"])
    assert view.first()["samp_rank"] == 1 and len(view) == 60


def test_the_panel_is_registered_and_offers_a_run_where_there_is_none(tiny_datasets):
    pre, _ = tiny_datasets
    assert foo.get_operator(PANEL).config.label == "Sample influence"
    state, _ = _panel_event(pre, "on_load")
    assert state["run_key"] is None and state["runs"] == []


def test_the_runs_are_listed_oldest_first_so_the_panel_opens_on_the_newest(sample_run, tmp_path):
    # "samp" exists; a newer run whose key sorts before it alphabetically comes last
    from transferscope.runs import sample_run_keys

    pre, tgt, _ = sample_run
    _sample_run_from_infl(pre, tgt, "aaa_newer", tmp_path / "newer", 1)
    assert sample_run_keys(tgt) == ["samp", "aaa_newer"]
    assert sample_run_keys(pre) == ["samp", "aaa_newer"]
