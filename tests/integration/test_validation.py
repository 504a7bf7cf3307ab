"""Odd input: refused before any work with a message that names it; labels and run
keys are data, never expressions or paths (property-based where it can be)."""

import inspect
import keyword
import os
import re
import socket
import threading
import warnings

import fiftyone as fo
import pytest
from helpers.tiny import TINY_KWARGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import transferscope as ts
from transferscope import TransferScopeError, explore
from transferscope import views as tsv
from transferscope.influence_run import run_dir_for, runs_dir

WEIRD_CLASSES = ["$5", "$ground_truth.label", "a.b", "x/y", "with space", ""]
WEIRD_TARGETS = ["$t", "p.q", "u/v"]


def _fields(ds):
    return set(ds.get_field_schema())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_models=10**7), r"num_models must be an integer from 2 to 1000000"),
        (dict(num_models=10**9), r"num_models must be an integer from 2 to 1000000"),
        (dict(image_size=2048), r"image_size must be an integer from 4 to 1024"),
        (dict(arch="no_such_net"), "unknown architecture 'no_such_net'"),
        (dict(arch="vit_b_16"), r"'vit_b_16' does not run on 16x16 images"),
        (dict(lr=1e6), r"lr must be a finite number in \(0, 10\]"),
        (dict(batch_size=1), "batch_size must be an integer from 2"),
        (dict(alpha="0.5"), "alpha must be a finite number"),
        (dict(seed=-1), "seed must be an integer from 0"),
        (dict(epochs=2.5), "epochs must be an integer"),
        (dict(foo=1), r"unknown argument\(s\) \['foo'\]"),
        (dict(run_key="a\n"), "Python identifier"),
        (dict(run_key="a" * 300), "at most 64 characters"),
        (dict(run_key="class"), "Python identifier"),
        (dict(resize="stretch"), "resize must be one of"),
        (dict(channels=2), "channels must be 1 or 3"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tiny_datasets, kwargs, message, monkeypatch):
    import transferscope.views as views

    pre, tgt = tiny_datasets
    before = (_fields(pre), _fields(tgt))
    monkeypatch.setattr(views, "decode_images", lambda *a, **k: pytest.fail("decoded images"))
    args = {**TINY_KWARGS, **kwargs}
    key = args.pop("run_key", "bad")
    with pytest.raises(TransferScopeError, match=message):
        ts.compute_class_influence(pre, tgt, key, **args)
    assert (_fields(pre), _fields(tgt)) == before and tgt.list_runs() == []


def test_cuda_without_a_gpu_is_refused_before_any_work(tiny_datasets):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pre, tgt = tiny_datasets
    with pytest.raises(TransferScopeError, match="CUDA is not available"):
        ts.compute_class_influence(pre, tgt, "bad", **{**TINY_KWARGS, "device": "cuda"})


def test_a_single_class_target_is_refused(tiny_datasets):
    pre, tgt = tiny_datasets
    tgt.set_values("ground_truth.label", ["t0"] * len(tgt))
    with pytest.raises(TransferScopeError, match=r"has 1 class\(es\).*needs at least 2"):
        ts.compute_class_influence(pre, tgt, "bad", **TINY_KWARGS)


def test_images_too_large_for_memory_are_refused_before_decoding(tiny_datasets, monkeypatch):
    import psutil

    pre, tgt = tiny_datasets

    class Small:
        total = 100_000  # bytes

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Small())
    with pytest.raises(TransferScopeError, match="more than half this machine's memory"):
        ts.compute_class_influence(pre, tgt, "bad", **{**TINY_KWARGS, "image_size": 64})


def test_unlabelled_pretraining_samples_are_counted_and_reported(tiny_datasets, caplog):
    pre, tgt = tiny_datasets
    for sample in pre.limit(3):
        sample["ground_truth"] = None
        sample.save()
    with caplog.at_level("WARNING", logger="transferscope"):
        results = ts.compute_class_influence(pre, tgt, "infl", progress=False, **TINY_KWARGS)
    assert results.metrics["unlabelled_pretraining_samples"] == 3
    assert "3 pretraining sample(s) have no 'ground_truth' label" in caplog.text


def test_a_listener_that_is_not_ray_is_refused_within_the_timeout():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    held = []
    threading.Thread(
        target=lambda: [held.append(server.accept()) for _ in range(4)], daemon=True
    ).start()
    from transferscope.influence_run import prepare_executor

    with pytest.raises(TransferScopeError, match="does not answer as a Ray cluster"):
        prepare_executor("ray", {"address": f"127.0.0.1:{port}", "connect_timeout": 2.0})
    server.close()


@pytest.fixture()
def weird_run(tiny_datasets, tmp_path):
    """A run whose class names look like field paths, paths and worse."""
    pre, tgt = tiny_datasets
    names = dict(zip([f"class{c}" for c in range(6)], WEIRD_CLASSES))
    pre.set_values("ground_truth.label", [names[l] for l in pre.values("ground_truth.label")])
    targets = dict(zip(["t0", "t1", "t2"], WEIRD_TARGETS))
    tgt.set_values("ground_truth.label", [targets[l] for l in tgt.values("ground_truth.label")])
    results = ts.compute_class_influence(
        pre, tgt, "infl", output_dir=str(tmp_path / "s"), progress=False, **TINY_KWARGS
    )
    return pre, tgt, results


def test_class_names_that_look_like_expressions_are_matched_as_written(weird_run):
    pre, tgt, results = weird_run
    assert sorted(results.classes) == sorted(WEIRD_CLASSES)
    for name in WEIRD_CLASSES:
        view = explore.class_samples(pre, "infl", name)
        assert len(view) == 10 and set(view.values("ground_truth.label")) == {name}
    record = ts.tag_classes(pre, "infl", rule="classes", classes=["$5", "$ground_truth.label"])
    assert record["num_samples"] == 20 and pre.match_tags("remove").count() == 20
    assert set(pre.match_tags("remove").values("ground_truth.label")) == {
        "$5",
        "$ground_truth.label",
    }
    assert len(pre.load_saved_view("infl_curated")) == 40
    ts.untag_classes(pre, "infl")
    record = ts.tag_classes(pre, "infl", rule="classes", classes=["", "x/y"])
    assert record["num_samples"] == 20
    summary = ts.find_subpopulations(tgt, "infl", key="sub", k=2)
    for name in summary["saved_views"]:
        view = tgt.load_saved_view(name)
        label = name[len("sub ") :]
        assert len(view) > 0 and set(view.values("sub.label")) == {label}


def test_splits_given_by_a_field_value_that_looks_like_a_path(tiny_datasets):
    pre, tgt = tiny_datasets
    tgt.set_values("split", ["$train" if "train" in t else "$test" for t in tgt.values("tags")])
    results = ts.compute_class_influence(
        pre,
        tgt,
        "byfield",
        split_by="field",
        train_split="$train",
        test_split="$test",
        progress=False,
        **TINY_KWARGS,
    )
    assert len(results.target_ids) == 18


def test_tagging_refuses_classes_renamed_since_the_run(tiny_datasets, tmp_path):
    pre, tgt = tiny_datasets
    ts.compute_class_influence(
        pre, tgt, "infl", output_dir=str(tmp_path / "s"), progress=False, **TINY_KWARGS
    )
    pre.set_values(
        "ground_truth.label",
        [l.replace("class0", "renamed") for l in pre.values("ground_truth.label")],
    )
    with pytest.raises(TransferScopeError, match=r"\['class0'\].*no longer labels"):
        ts.tag_classes(pre, "infl", rule="classes", classes=["class1"])
    assert "remove" not in pre.count_sample_tags()


KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(KEY, fullmatch=True)))
def test_run_keys_are_identifiers_and_stores_stay_in_the_runs_directory(key):
    valid = bool(KEY.fullmatch(key)) and len(key) <= 64 and not keyword.iskeyword(key)
    try:
        tsv.validate_run_key(key)
        accepted = True
    except TransferScopeError:
        accepted = False
    assert accepted == valid
    if accepted:

        class Root:  # what run_dir_for reads of a dataset
            class _doc:
                id = "0123456789abcdef01234567"

        path = run_dir_for(None, Root, key)
        root = os.path.realpath(runs_dir())
        assert os.path.commonpath([root, path]) == root and path.endswith(key)


@pytest.fixture(scope="module")
def label_dataset():
    ds = fo.Dataset()
    ds.add_samples(
        [
            fo.Sample(filepath=f"/nowhere/{i}.png", gt=fo.Classification(label=f"x{i}"))
            for i in range(8)
        ]
    )
    yield ds
    ds.delete()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.text(max_size=12), min_size=1, max_size=4, unique=True),
    st.lists(st.integers(0, 3), min_size=8, max_size=8),
)
def test_any_label_string_matches_exactly_its_samples(label_dataset, names, picks):
    ds = label_dataset
    labels = [names[p % len(names)] for p in picks]
    ds.set_values("gt.label", labels)
    ids = ds.values("id")
    for name in names:
        expected = sorted(i for i, l in zip(ids, labels) if l == name)
        assert sorted(ds.match(tsv.label_is("gt.label", name)).values("id")) == expected
        assert sorted(tsv.ids_with_labels(ds, "gt.label", [name])) == expected
    chosen = names[:2]
    expected = sorted(i for i, l in zip(ids, labels) if l in chosen)
    assert sorted(ds.match(tsv.label_in("gt.label", chosen)).values("id")) == expected


READERS = [
    "tag_classes",
    "untag_classes",
    "evaluate_curation",
    "curation_of",
    "class_samples",
    "most_influenced",
    "plan_class_diversity",
    "find_subpopulations",
    "explain_failures",
    "detect_leakage",
    "find_near_duplicates",
]


@pytest.mark.parametrize("name", READERS)
def test_jobs_that_read_a_run_name_it_influence_key_and_still_take_run_key(name):
    fn = getattr(explore, name, None) or getattr(ts, name)
    assert "influence_key" in inspect.signature(fn).parameters
    assert "run_key" not in inspect.signature(fn).parameters
    with pytest.raises(TypeError, match="pass only influence_key="):
        fn("any-dataset", influence_key="a", run_key="a")


def test_the_old_keyword_warns_and_is_passed_under_the_new_name():
    from transferscope.views import renamed_keywords

    @renamed_keywords(run_key="influence_key")
    def job(dataset, influence_key, key="out"):
        return dataset, influence_key, key

    with pytest.warns(
        DeprecationWarning, match=r"job\(run_key=...\) is deprecated; use influence_key="
    ):
        assert job("d", run_key="infl") == ("d", "infl", "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert job("d", "infl") == ("d", "infl", "out")


def test_compute_class_influence_names_the_run_it_writes_key():
    params = inspect.signature(ts.compute_class_influence).parameters
    assert list(params)[:3] == ["pretrain_dataset", "target_dataset", "key"]
    with pytest.raises(TypeError, match="pass only key="):
        ts.compute_class_influence("a", "b", key="k", run_key="k")


def test_classes_with_very_few_samples_are_named_in_a_warning(caplog):
    from transferscope.influence_run import MIN_CLASS_SAMPLES, warn_small_classes

    labels = ["a"] * 10 + ["b"] + ["$5"] * (MIN_CLASS_SAMPLES - 1) + ["c"] * MIN_CLASS_SAMPLES
    with caplog.at_level("WARNING"):
        assert warn_small_classes(labels) == ["$5", "b"]
    assert "2 pretraining class(es) have fewer than 5 samples ('$5': 4, 'b': 1)" in caplog.text
    assert warn_small_classes(["a"] * MIN_CLASS_SAMPLES) == []
