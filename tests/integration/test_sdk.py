"""compute_class_influence against the real database: writes, runs, bad input."""

import json
import os

import fiftyone as fo
import numpy as np
import pytest
from helpers.tiny import TINY_KWARGS

import transferscope as ts
from transferscope import TransferScopeError
from transferscope.runs import ClassInfluenceResults


def _fields(ds):
    return set(ds.get_field_schema())


def test_writes_fields_runs_and_results(tiny_datasets, tmp_path):
    pre, tgt = tiny_datasets
    results = ts.compute_class_influence(
        pre, tgt, "infl", top_k=2, output_dir=str(tmp_path / "store"), **TINY_KWARGS
    )
    assert isinstance(results, ClassInfluenceResults)
    assert results.influence.shape == (6, 18)
    assert len(results.classes) == 6 and len(results.target_ids) == 18

    test = tgt.match_tags("test")
    helpful = test.values("infl_helpful")
    assert all(len(h.classifications) == 2 for h in helpful)
    # scores on samples equal the stored matrix
    t0 = results.target_ids.index(test.first().id)
    first = test.first()["infl_helpful"].classifications[0]
    c = results.classes.index(first.label)
    assert first.influence == pytest.approx(results.influence[c, t0])
    assert first.influence == pytest.approx(results.influence[:, t0].max())
    harm = test.first()["infl_harmful"].classifications[0]
    assert harm.influence == pytest.approx(results.influence[:, t0].min())
    assert tgt.match_tags("train").exists("infl_helpful").count() == 0
    acc = np.array(test.values("infl_accuracy"))
    assert ((acc >= 0) & (acc <= 1)).all()
    assert tgt.has_sample_field("infl_helpful.classifications.influence")

    # pretraining samples carry their class's aggregate influence
    for label, value in zip(*pre.values(["ground_truth.label", "infl_influence"])):
        assert value == pytest.approx(results.class_influence[results.classes.index(label)])

    # the run is registered on both datasets and loads from the database
    assert "infl" in tgt.list_runs() and "infl" in pre.list_runs()
    loaded = fo.load_dataset(tgt.name).load_run_results("infl", cache=False)
    np.testing.assert_allclose(loaded.influence, results.influence, atol=1e-6)
    assert loaded.ranking()[0][0] == results.ranking()[0][0]
    assert loaded.metrics["num_models"] == 4
    # what precision="auto" meant on this CPU is recorded with the run
    from transferscope.compute.train import cpu_has_matrix_units

    assert loaded.metrics["precision"] == ("bf16" if cpu_has_matrix_units() else "fp32")
    lo, hi = loaded.class_ci_low, loaded.class_ci_high
    assert (lo <= loaded.class_influence).all() and (loaded.class_influence <= hi).all()

    # re-running with the same key needs overwrite; with it, the store is reused
    with pytest.raises(TransferScopeError, match="already has a run"):
        ts.compute_class_influence(
            pre, tgt, "infl", output_dir=str(tmp_path / "store"), **TINY_KWARGS
        )
    again = ts.compute_class_influence(
        pre, tgt, "infl", top_k=2, overwrite=True, output_dir=str(tmp_path / "store"), **TINY_KWARGS
    )
    np.testing.assert_allclose(again.influence, results.influence)

    # deleting the runs deletes their fields
    tgt.delete_run("infl")
    pre.delete_run("infl")
    assert not {"infl_helpful", "infl_harmful", "infl_accuracy"} & _fields(tgt)
    assert "infl_influence" not in _fields(pre)


def test_progress_callback_reports_every_model(tiny_datasets):
    pre, tgt = tiny_datasets
    seen = []
    ts.compute_class_influence(
        pre, tgt, "prog", progress=lambda d, t: seen.append((d, t)), **TINY_KWARGS
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_splits_by_field_and_saved_view(tiny_datasets):
    pre, tgt = tiny_datasets
    tgt.set_values("split", ["train" if "train" in t else "test" for t in tgt.values("tags")])
    r1 = ts.compute_class_influence(pre, tgt, "byfield", split_by="field", **TINY_KWARGS)
    tgt.save_view("tr", tgt.match_tags("train"))
    tgt.save_view("te", tgt.match_tags("test"))
    r2 = ts.compute_class_influence(
        pre, tgt, "byview", train_split="tr", test_split="te", split_by="saved_view", **TINY_KWARGS
    )
    np.testing.assert_allclose(r1.influence, r2.influence)


def _assert_unchanged(pre, tgt, before):
    assert (_fields(pre), _fields(tgt)) == before
    assert pre.list_runs() == [] and tgt.list_runs() == []


BAD_INPUTS = [
    (dict(pretrain_label_field="nope"), "does not exist"),
    (dict(target_label_field="filepath"), "not a Classification field"),
    (dict(test_split="missing_tag"), "is empty"),
    (dict(alpha=1.0), "alpha must be a finite number in"),
    (dict(alpha=0.0), "alpha must be a finite number in"),
    (dict(num_models=3), "too few models"),
    (dict(run_key="bad key"), "Python identifier"),
    (dict(run_key="_private"), "Python identifier"),
    (dict(top_k=0), "top_k"),
    (dict(target_function="loss"), "target_function"),
    (dict(split_by="regex"), "split_by"),
    (dict(design="latin"), "design must be one of"),
    (dict(estimator="ridge"), "estimator must be one of"),
    (dict(holdout_models=2), "holdout_models must be 0"),
    (dict(design="orthogonal", alpha=0.3), "alpha 0.5"),
    (dict(estimator="regression"), "the regression needs more models"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_input_is_refused_and_changes_nothing(tiny_datasets, kwargs, message):
    pre, tgt = tiny_datasets
    before = (_fields(pre), _fields(tgt))
    args = {**TINY_KWARGS, **kwargs}
    key = args.pop("run_key", "bad")
    with pytest.raises(TransferScopeError, match=message):
        ts.compute_class_influence(pre, tgt, key, **args)
    _assert_unchanged(pre, tgt, before)


def test_test_labels_absent_from_train(tiny_datasets):
    pre, tgt = tiny_datasets
    before = (_fields(pre), _fields(tgt))
    view = tgt.match_tags("train").match(fo.ViewField("ground_truth.label") == "t2")
    view.untag_samples("train")
    with pytest.raises(TransferScopeError, match=r"absent from the train split: \['t2'\]"):
        ts.compute_class_influence(pre, tgt, "bad", **TINY_KWARGS)
    _assert_unchanged(pre, tgt, before)


def test_fewer_than_two_pretraining_classes(tiny_datasets):
    pre, tgt = tiny_datasets
    before = (_fields(pre), _fields(tgt))
    one_class = pre.match(fo.ViewField("ground_truth.label") == "class0")
    with pytest.raises(TransferScopeError, match="at least 2 pretraining classes"):
        ts.compute_class_influence(one_class, tgt, "bad", **TINY_KWARGS)
    _assert_unchanged(pre, tgt, before)


def test_unreadable_images_are_named(tiny_datasets):
    pre, tgt = tiny_datasets
    before = (_fields(pre), _fields(tgt))
    victim = pre.skip(7).first()
    with open(victim.filepath, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(TransferScopeError, match=f"1 image\\(s\\) could not be read: {victim.id}"):
        ts.compute_class_influence(pre, tgt, "bad", **TINY_KWARGS)
    _assert_unchanged(pre, tgt, before)


def test_missing_labels_and_foreign_fields(tiny_datasets):
    pre, tgt = tiny_datasets
    sample = tgt.match_tags("test").first()
    sample["ground_truth"] = None
    sample.save()
    with pytest.raises(TransferScopeError, match="have no 'ground_truth' label"):
        ts.compute_class_influence(pre, tgt, "bad", **TINY_KWARGS)
    sample["ground_truth"] = fo.Classification(label="t0")
    sample.save()
    tgt.add_sample_field("clash_helpful", fo.StringField)
    with pytest.raises(TransferScopeError, match="no transferscope run"):
        ts.compute_class_influence(pre, tgt, "clash", **TINY_KWARGS)
    with pytest.raises(TransferScopeError, match="no dataset named .no-such-dataset. exists"):
        ts.compute_class_influence("no-such-dataset", tgt, "x", **TINY_KWARGS)


def test_a_failure_while_writing_leaves_nothing_behind(tiny_datasets, monkeypatch):
    pre, tgt = tiny_datasets
    before = (_fields(pre), _fields(tgt))
    real_set_values = fo.core.collections.SampleCollection.set_values

    def flaky_set_values(self, field, *a, **k):
        if field.endswith("_partial_influence"):  # the last write, after the target fields
            raise RuntimeError("disk full")
        return real_set_values(self, field, *a, **k)

    monkeypatch.setattr(fo.core.collections.SampleCollection, "set_values", flaky_set_values)
    with pytest.raises(RuntimeError, match="disk full"):
        ts.compute_class_influence(pre, tgt, "partial", **TINY_KWARGS)
    _assert_unchanged(pre, tgt, before)


def test_another_config_trains_in_its_own_store_and_replaces_the_old_one_at_commit(
    tiny_datasets, tmp_path
):
    pre, tgt = tiny_datasets
    run_dir = tmp_path / "s"
    first = ts.compute_class_influence(pre, tgt, "cfg", output_dir=str(run_dir), **TINY_KWARGS)
    old_store = first.config.output_dir
    assert os.path.dirname(old_store) == str(run_dir)  # <run dir>/<config hash>
    other = {**TINY_KWARGS, "epochs": 2}
    with pytest.raises(TransferScopeError, match="already has a run with key 'cfg'"):
        ts.compute_class_influence(pre, tgt, "cfg", output_dir=str(run_dir), **other)
    results = ts.compute_class_influence(
        pre, tgt, "cfg", output_dir=str(run_dir), overwrite=True, **other
    )
    assert results.metrics["num_models"] == 4 and results.config.epochs == 2
    assert results.config.output_dir != old_store and not os.path.exists(old_store)
    # a user's file in the run directory is never touched, and such a directory is refused
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(TransferScopeError, match="holds files transferscope did not write"):
        ts.compute_class_influence(
            pre, tgt, "cfg", output_dir=str(run_dir), overwrite=True, **TINY_KWARGS
        )
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert tgt.get_run_info("cfg").config.epochs == 2  # the run that was there stays


def test_a_failing_model_leaves_the_run_incomplete_and_a_rerun_trains_only_it(
    tiny_datasets, tmp_path, monkeypatch
):
    import transferscope.compute.executors as executors

    pre, tgt = tiny_datasets
    real = executors.train_subset_model
    trained, failed = [], []

    def fails_for_model_2(config, index, *args, **kwargs):
        trained.append(index)
        if index == 2 and not failed:  # fails once
            failed.append(index)
            raise RuntimeError("simulated out of memory")
        return real(config, index, *args, **kwargs)

    monkeypatch.setattr(executors, "train_subset_model", fails_for_model_2)
    store = str(tmp_path / "store")
    with pytest.raises(
        TransferScopeError,
        match=r"1 model\(s\) failed: row 2: RuntimeError: simulated out of "
        r"memory\. The run is incomplete: 3 of 4 models are stored",
    ):
        ts.compute_class_influence(pre, tgt, "f", output_dir=store, progress=False, **TINY_KWARGS)
    assert trained == [0, 1, 2, 3]  # the others still trained
    assert "f" not in tgt.list_runs() and not tgt.has_sample_field("f_helpful")
    assert not pre.has_sample_field("f_influence")

    trained.clear()
    ts.compute_class_influence(
        pre,
        tgt,
        "f",
        output_dir=store,
        progress=False,
        executor_options={"threads": 1},
        **TINY_KWARGS,
    )
    assert trained == [2]  # the rerun trains only the missing model
    assert tgt.match_tags("test").exists("f_helpful").count() == 18


def test_default_design_is_orthogonal_rounded_to_blocks_with_q_values_and_lds(
    tiny_datasets, tmp_path
):
    pre, tgt = tiny_datasets
    kwargs = {**TINY_KWARGS, "num_models": 20, "holdout_models": 3}
    results = ts.compute_class_influence(
        pre, tgt, "ortho", output_dir=str(tmp_path / "o"), progress=False, **kwargs
    )
    m = results.metrics
    # 6 classes: an order-8 Hadamard block, folded: 16 models per block
    assert m["num_models"] == 32 and results.config.num_models == 32
    assert m["design"] == "orthogonal" and "20 models rounded up to 32" in m["design_note"]
    assert m["estimator"] == "regression" and m["standard_errors"] == "residuals"
    assert m["num_holdout_models"] == 3
    # the LDS the run reports is the one its stored models give
    from transferscope.compute import ResultsStore, linear_datamodeling_score

    from transferscope.influence_run import HOLDOUT_DIR

    out_dir = results.config.output_dir
    store = ResultsStore.load(out_dir)
    held = ResultsStore.load(os.path.join(out_dir, HOLDOUT_DIR))
    again = linear_datamodeling_score(
        store.masks, store.outputs("prob"), held.masks, held.outputs("prob"), m["estimator"]
    )
    assert m["lds"] == pytest.approx(again["lds"])
    loaded = tgt.load_run_results("ortho", cache=False)
    q = loaded.q_values
    assert q.shape == (6,) and ((q >= loaded.class_p_value - 1e-12) & (q <= 1)).all()
    np.testing.assert_allclose(q, pre.load_run_results("ortho", cache=False).q_values)
    assert "q=" in loaded.describe_class(0)
    # the held-out models have their own store, and a rerun trains nothing again
    assert os.path.exists(os.path.join(results.config.output_dir, "holdout", "spec.json"))
    seen = []
    ts.compute_class_influence(
        pre,
        tgt,
        "ortho",
        output_dir=str(tmp_path / "o"),
        overwrite=True,
        progress=lambda d, t: seen.append((d, t)),
        **kwargs,
    )
    assert seen == []


def test_runs_from_before_designs_keep_their_design_and_hash():
    from types import SimpleNamespace

    from transferscope.compute import InfluenceConfig

    from transferscope.influence_run import influence_config_of

    old_config = SimpleNamespace(num_models=4, epochs=1, width=4)  # no design, no holdout
    config = influence_config_of(SimpleNamespace(config=old_config))
    assert config.design == "pairs" and config.holdout_models == 0
    # the pairs design hashes as every config did before the field existed
    assert InfluenceConfig(num_models=4, design="pairs").fingerprint("d") != InfluenceConfig(
        num_models=4
    ).fingerprint("d")


def _stored_results_json(dataset, key):
    import fiftyone.core.runs as fors

    doc = fors.Run._get_run_doc(dataset, key)
    doc.results.seek(0)
    return json.loads(doc.results.read().decode())


def test_the_matrices_live_in_the_store_and_load_memory_mapped(tiny_datasets, tmp_path):
    pre, tgt = tiny_datasets
    out = str(tmp_path / "store")
    results = ts.compute_class_influence(pre, tgt, "infl", output_dir=out, **TINY_KWARGS)
    stored = _stored_results_json(tgt, "infl")
    assert "influence" not in stored and "stderr" not in stored
    assert "class_influence" in stored and set(stored["matrix_paths"]) == {"influence", "stderr"}
    loaded = tgt.load_run_results("infl", cache=False)
    for name in ("influence", "stderr"):
        matrix = getattr(loaded, name)
        assert isinstance(matrix, np.memmap) and matrix.dtype == np.float32
        assert matrix.shape == (6, 18)
        assert os.path.dirname(loaded.matrix_paths[name]) == results.config.output_dir
    np.testing.assert_allclose(loaded.influence, results.influence)
    assert pre.load_run_results("infl", cache=False).influence is None  # aggregates only

    # another target function: its own matrices replace the old ones in the store
    again = ts.compute_class_influence(
        pre, tgt, "infl", overwrite=True, output_dir=out, target_function="margin", **TINY_KWARGS
    )
    assert again.matrix_paths["influence"] != loaded.matrix_paths["influence"]
    assert not os.path.exists(loaded.matrix_paths["influence"])
    assert not np.allclose(again.influence, results.influence)

    # a matrix file that is gone or damaged is named, not read as garbage
    with open(again.matrix_paths["stderr"], "r+b") as f:
        f.truncate(100)
    with pytest.raises(TransferScopeError, match="stderr matrix of run 'infl' is unreadable"):
        _ = tgt.load_run_results("infl", cache=False).stderr


def test_runs_with_inline_matrices_still_load(tiny_datasets, tmp_path):
    """Runs written before the matrices moved to the store hold them in the
    database; they load, answer views and delete as before."""
    from transferscope import explore

    pre, tgt = tiny_datasets
    results = ts.compute_class_influence(
        pre, tgt, "infl", output_dir=str(tmp_path / "store"), **TINY_KWARGS
    )
    attrs = {
        a: getattr(results, a) for a in results.attributes() if a not in ("cls", "matrix_paths")
    }
    old = ClassInfluenceResults(
        tgt,
        results.config,
        "infl",
        influence=results.influence.tolist(),
        stderr=results.stderr.tolist(),
        **attrs,
    )
    tgt.save_run_results("infl", old, overwrite=True, cache=False)
    os.remove(results.matrix_paths["influence"])  # the old run never had the files
    assert len(_stored_results_json(tgt, "infl")["influence"]) == 6
    loaded = tgt.load_run_results("infl", cache=False)
    np.testing.assert_allclose(loaded.influence, results.influence, atol=1e-6)
    c = int(np.argmax(results.class_influence))
    view = explore.most_influenced(tgt, "infl", results.classes[c], k=3)
    expected = np.argsort(-np.asarray(results.influence[c]), kind="stable")[:3]
    assert view.values("id") == [results.target_ids[i] for i in expected]
    tgt.delete_run("infl")
    assert "infl" not in tgt.list_runs() and not tgt.has_sample_field("infl_helpful")
