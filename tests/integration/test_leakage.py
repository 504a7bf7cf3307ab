"""Leakage and near-duplicates through the SDK, the operators and the Brain backend."""

import os
import shutil

import fiftyone as fo
import fiftyone.brain as fob
import fiftyone.operators as foo
import numpy as np
import pytest
from helpers.tiny import TINY_KWARGS
from PIL import Image
from scipy import ndimage

import transferscope as ts  # registers the faiss similarity backend
from transferscope import TransferScopeError
from transferscope.leakage import detect_leakage, find_near_duplicates

PLUGIN = "@transferscope/transferscope"


def _pixels(paths):
    return [np.asarray(Image.open(p).convert("L"), np.float32).ravel() / 255 for p in paths]


@pytest.fixture()
def leaky(tiny_datasets, tmp_path):
    """Three target test images copied into the pretraining set (exact, noised,
    re-contrasted); flattened pixels as an embeddings field on both datasets."""
    pre, tgt = tiny_datasets
    rng = np.random.default_rng(1)
    leaked = tgt.match_tags("test").sort_by("filepath").limit(3)  # deterministic, unlike take()
    copies = []
    for kind, (sid, path) in zip(
        ("exact", "noise", "contrast"), zip(*leaked.values(["id", "filepath"]))
    ):
        out = str(tmp_path / f"copy_{kind}.png")
        if kind == "exact":
            shutil.copy(path, out)
        else:
            img = np.asarray(Image.open(path), np.float32)
            img = img + rng.normal(0, 3, img.shape) if kind == "noise" else 0.95 * img + 8
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out)
        copies.append(
            fo.Sample(filepath=out, ground_truth=fo.Classification(label="class0"), leak_of=sid)
        )
    pre.add_samples(copies, progress=False)
    for ds in (pre, tgt):
        ds.set_values("emb", _pixels(ds.values("filepath")))
    return pre, tgt, set(leaked.values("id"))


def test_planted_copies_are_found_written_and_undone(leaky):
    pre, tgt, planted = leaky
    summary = detect_leakage(
        tgt,
        pre,
        key="lk",
        embeddings_field="emb",
        target_split="test",
        max_distance=0.05,
        threshold=0.5,
    )
    d = dict(zip(*tgt.match_tags("test").values(["id", "lk_distance"])))
    assert set(summary["leak_ids"]) == planted, (sorted(d.values())[:6], [d[i] for i in planted])
    assert summary["num_exact_file_copies"] == 1 and summary["index"] == "flat"
    assert summary.describe()[0].startswith(
        f"{len(planted)} of 18 target samples are likely leaks (1 byte-identical"
    )
    traces, _ = summary.plotly()
    assert traces[0]["y"] == [18, len(planted), 1, 0]
    test = tgt.match_tags("test")
    assert (
        test.exists("lk_score").count() == 18
        and tgt.match_tags("train").exists("lk_score").count() == 0
    )
    assert set(tgt.match_tags("leak").values("id")) == planted
    for s in tgt.select(list(planted)):
        near = pre[s.lk_nearest_id]
        assert near.leak_of == s.id and s.lk_nearest_label == "class0"
        assert s.lk_distance < 0.05 and s.lk_score >= 0.5
    view = tgt.load_saved_view("lk_likely_leaks")
    assert set(view.values("id")) == planted
    scores = view.values("lk_score")
    assert scores == sorted(scores, reverse=True)
    assert "lk" in tgt.list_runs()
    assert tgt.load_run_results("lk").summary["num_leaks"] == 3

    with pytest.raises(TransferScopeError, match="already has a run"):
        detect_leakage(tgt, pre, key="lk", embeddings_field="emb")
    tgt.delete_run("lk")  # removes fields, tag and view
    assert not tgt.has_sample_field("lk_score") and "leak" not in tgt.count_sample_tags()
    assert not tgt.has_saved_view("lk_likely_leaks")


def test_near_duplicate_groups_in_the_pretraining_set(leaky):
    pre, tgt, planted = leaky
    # a second exact copy of a leaked image: the copies group with each other
    first = pre.exists("leak_of").first()
    pre.add_sample(
        fo.Sample(
            filepath=first.filepath, emb=first.emb, ground_truth=fo.Classification(label="class1")
        )
    )
    summary = find_near_duplicates(pre, key="dups", embeddings_field="emb", max_distance=0.01)
    assert summary["num_groups"] >= 1 and summary["num_exact_pairs"] >= 1
    assert summary.describe()[0].startswith(f"{summary['num_groups']} near-duplicate groups")
    assert summary.plotly()[0][0]["y"][1] == summary["num_grouped_samples"]
    groups = pre.match(fo.ViewField("filepath") == first.filepath).values("dups_group")
    assert len(set(groups)) == 1 and groups[0] is not None
    assert pre.match_tags("near_duplicate").count() == summary["num_grouped_samples"]
    assert len(pre.load_saved_view("dups_groups")) == summary["num_grouped_samples"]
    pre.delete_run("dups")
    assert "near_duplicate" not in pre.count_sample_tags() and not pre.has_sample_field(
        "dups_group"
    )


def test_bad_input_is_refused_and_changes_nothing(leaky, tmp_path):
    pre, tgt, planted = leaky
    before = set(tgt.get_field_schema())
    for ds in (pre, tgt):
        ds.set_values("short", list(np.random.default_rng(0).normal(size=(len(ds), 8))))
    nan = pre.values("emb")
    nan[4] = nan[4].copy()
    nan[4][0] = np.nan
    pre.set_values("nan_emb", nan)
    tgt.set_values("nan_emb", tgt.values("emb"))
    cases = [
        (dict(embeddings_field="emb", pretrain_embeddings_field="short"), "dimension"),
        (dict(embeddings_field="short", pretrain_embeddings_field="emb"), "dimension"),
        (dict(embeddings_field="nan_emb"), "NaN or infinite values, e.g. sample"),
        (dict(embeddings_field="nope"), "has no embeddings field 'nope'"),
        (
            dict(embeddings_field="emb", threshold=0.0),
            r"threshold must be a finite number in \(0, 1\]",
        ),
        (
            dict(embeddings_field="emb", threshold=1.5),
            r"threshold must be a finite number in \(0, 1\]",
        ),
        (
            dict(embeddings_field="emb", max_distance=3),
            r"max_distance must be a finite number in \(0, 2\]",
        ),
        (dict(embeddings_field="emb", index="lsh"), "index must be one of"),
        (dict(embeddings_field="emb", target_split="nosuchtag"), "is empty"),
        (dict(), "name an embeddings source"),
        (
            dict(model="resnet18", weights_path=str(tmp_path / "none.pth")),
            "must name a file in the models directory",
        ),
        (
            dict(model="resnet18", weights_path="../../etc/passwd"),
            "must name a file in the models directory",
        ),
        (dict(model="resnet18", weights_path="missing.pth"), "no weights file 'missing.pth'"),
        (dict(model="not_a_model"), "unknown architecture"),
    ]
    for kw, message in cases:
        with pytest.raises(TransferScopeError, match=message):
            detect_leakage(tgt, pre, key="bad", **kw)
        assert "bad" not in tgt.list_runs()
        assert set(tgt.get_field_schema()) - before <= {"short", "nan_emb"}
    empty = fo.Dataset()
    with pytest.raises(TransferScopeError, match="empty"):
        detect_leakage(tgt, empty, key="bad", embeddings_field="emb")
    with pytest.raises(TransferScopeError, match="fewer than 2 samples"):
        find_near_duplicates(empty, key="bad", embeddings_field="emb")
    empty.delete()


def test_run_backbone_and_torchvision_model_sources(leaky, tmp_path):
    import torch
    import torchvision

    pre, tgt, planted = leaky
    run = ts.compute_class_influence(
        pre, tgt, "infl", progress=False, output_dir=str(tmp_path / "store"), **TINY_KWARGS
    )
    summary = detect_leakage(tgt, key="bb", influence_key="infl", max_distance=0.05)
    # a 1-epoch, width-4 backbone is no duplicate detector: the byte-identical
    # copy must be found (hash and distance 0); the others may or may not be
    exact = pre.match(fo.ViewField("filepath").ends_with("copy_exact.png")).first().leak_of
    assert summary["num_targets"] == 18 and exact in summary["leak_ids"]
    assert tgt[exact].bb_distance == 0 and tgt[exact].bb_score > 0.5
    assert tgt.match_tags("test").exists("bb_influence_z").count() == 18
    # the backbone is cached next to the run's models, loaded without pickle
    cache = os.path.join(run.config.output_dir, "backbone")
    assert len([f for f in os.listdir(cache) if f.endswith(".pt")]) == 1
    again = detect_leakage(tgt, key="bb2", influence_key="infl", max_distance=0.05)
    assert again["leak_ids"] == summary["leak_ids"]
    op = foo.execute_operator(
        f"{PLUGIN}/detect_leakage",
        ctx=dict(
            dataset=tgt,
            params=dict(
                source="run",
                influence_run="infl",
                max_distance=0.05,
                threshold=0.5,
                index="auto",
                device="cpu",
                tag="leak",
                run_key="op_bb",
                overwrite=False,
            ),
        ),
    )
    assert op.error is None, op.error
    assert op.result["num_targets"] == 18 and "op_bb" in tgt.list_runs()
    dups = find_near_duplicates(pre, key="nd", influence_key="infl")
    assert dups["num_exact_pairs"] == 0 and dups["num_samples"] == 63

    from transferscope.embeddings import models_dir

    os.makedirs(models_dir(), exist_ok=True)
    weights = os.path.join(models_dir(), "resnet18.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    summary = detect_leakage(
        tgt,
        pre,
        key="tv",
        model="resnet18",
        weights_path="resnet18.pth",
        image_size=32,
        target_split="test",
        max_distance=0.01,
    )
    # byte-identical copy at least; random weights make the rest noise
    assert summary["num_exact_file_copies"] == 1 and summary["num_targets"] == 18


def test_a_weights_file_that_is_not_a_state_dict_reveals_nothing_of_it(leaky):
    from transferscope.embeddings import models_dir

    pre, tgt, planted = leaky
    os.makedirs(models_dir(), exist_ok=True)
    secret = os.path.join(models_dir(), "notes.pth")
    with open(secret, "w") as f:
        f.write("SECRET-CONTENT")
    with pytest.raises(TransferScopeError) as info:
        detect_leakage(tgt, pre, key="bad", model="resnet18", weights_path="notes.pth")
    assert "is not a state dict of 'resnet18'" in str(info.value)
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None
    assert "bad" not in tgt.list_runs()


def test_faiss_brain_backend_matches_sklearn(leaky):
    pre, tgt, planted = leaky
    faiss_index = fob.compute_similarity(pre, embeddings="emb", backend="faiss", brain_key="fs")
    sk_index = fob.compute_similarity(pre, embeddings="emb", backend="sklearn", brain_key="sk")
    query = pre.first().id
    by_faiss = pre.sort_by_similarity(query, k=5, brain_key="fs").values("id")
    by_sklearn = pre.sort_by_similarity(query, k=5, brain_key="sk").values("id")
    assert by_faiss == by_sklearn and by_faiss[0] == query
    faiss_index.find_duplicates(thresh=0.05)
    sk_index.find_duplicates(thresh=0.05)
    assert set(faiss_index.duplicate_ids) == set(sk_index.duplicate_ids)
    loaded = fo.load_dataset(pre.name).load_brain_results("fs")
    assert type(loaded).__name__ == "FaissSimilarityIndex"
    # an index built for other samples refuses their ids
    with pytest.raises(ValueError, match="do not exist in this index"):
        pre.sort_by_similarity(tgt.first().id, brain_key="fs")
    # and Brain's own leaky-splits runs on it
    leaks = fob.compute_leaky_splits(
        pre,
        splits={"a": pre.limit(30), "b": pre.skip(30)},
        similarity_index=faiss_index,
        threshold=0.05,
    )
    assert leaks.leaks_view() is not None


def test_operators_detect_leakage_and_find_duplicates(leaky):
    pre, tgt, planted = leaky
    out = foo.execute_operator(
        f"{PLUGIN}/detect_leakage",
        ctx=dict(
            dataset=tgt,
            params=dict(
                source="field",
                embeddings_field="emb",
                pretrain_dataset=pre.name,
                target_split="test",
                cut="distance",
                max_distance=0.05,
                threshold=0.5,
                index="flat",
                device="cpu",
                tag="leak",
                run_key="op_leak",
                overwrite=False,
            ),
        ),
    )
    assert out.error is None, out.error
    assert out.result["num_leaks"] == 3 and out.result["saved_view"] == "op_leak_likely_leaks"
    assert set(tgt.match_tags("leak").values("id")) == planted
    out = foo.execute_operator(
        f"{PLUGIN}/find_near_duplicates",
        ctx=dict(
            dataset=pre,
            params=dict(
                source="field",
                embeddings_field="emb",
                max_distance=0.01,
                num_neighbors=8,
                index="auto",
                device="cpu",
                tag="near_duplicate",
                run_key="op_dups",
                overwrite=False,
            ),
        ),
    )
    assert out.error is None, out.error
    assert pre.has_sample_field("op_dups_group") or out.result["num_groups"] == 0
    with pytest.raises(Exception, match=r"the threshold must lie in \(0, 1\]"):
        foo.execute_operator(
            f"{PLUGIN}/detect_leakage",
            ctx=dict(
                dataset=tgt,
                params=dict(
                    source="field",
                    embeddings_field="emb",
                    pretrain_dataset=pre.name,
                    threshold=2.0,
                    run_key="bad",
                ),
            ),
        )


def test_example_level_attribution_as_the_influence_signal(leaky, tmp_path):
    """With a sample-influence run, a target's influence signal is how unusually
    its nearest pretraining image (not its class) helps it."""
    pre, tgt, planted = leaky
    protocol = {k: v for k, v in TINY_KWARGS.items() if k not in ("num_models", "holdout_models")}
    run = ts.compute_sample_influence(
        pre,
        tgt,
        "samp",
        num_models=2,
        holdout_models=0,
        output_dir=str(tmp_path / "s"),
        progress=False,
        **protocol,
    )
    summary = detect_leakage(
        tgt,
        key="lk",
        embeddings_field="emb",
        sample_influence_key="samp",
        target_split="test",
        max_distance=0.05,
    )
    assert tgt.get_run_info("lk").config.sample_influence_key == "samp"
    scores = np.asarray(run.scores(), dtype=np.float64)
    rows = {sid: i for i, sid in enumerate(run.pretrain_ids)}
    for t, sid in enumerate(run.target_ids):
        sample = tgt[sid]
        column = scores[:, t]
        z = (column[rows[sample.lk_nearest_id]] - column.mean()) / column.std()
        assert sample.lk_influence_z == pytest.approx(z, rel=1e-6, abs=1e-9)
    assert summary["num_targets"] == 18 and set(summary["leak_ids"]) <= set(run.target_ids)
    with pytest.raises(TransferScopeError, match="not a transferscope sample-influence run"):
        detect_leakage(tgt, pre, key="lk2", embeddings_field="emb", sample_influence_key="lk")
    assert "lk2" not in tgt.list_runs()


def test_an_exact_copy_is_flagged_even_where_its_class_hurts_its_twin(tiny_run, tmp_path):
    """Certain evidence first: influence can raise a leak score, never lower it."""
    from transferscope.compute import neighbors as nb

    pre, tgt, results = tiny_run
    infl = np.asarray(results.influence, dtype=np.float64)
    # the (class, test sample) pair where the class stands out most as harmful
    z = np.stack([nb.influence_support(infl, np.full(infl.shape[1], c)) for c in range(len(infl))])
    c, t = np.unravel_index(np.argmin(z), z.shape)
    assert z[c, t] < -1.6  # so strongly that the old combined score fell below 0.5
    twin = tgt[results.target_ids[t]]
    host = pre.match(fo.ViewField("ground_truth.label") == results.classes[c]).first()
    copy = str(tmp_path / "copy.png")
    shutil.copy(twin.filepath, copy)
    original, host.filepath = host.filepath, copy
    host.save()
    try:
        summary = detect_leakage(tgt, key="neg", influence_key="infl", threshold=0.5)
        twin.reload()
        assert twin.id in summary["leak_ids"] and summary["num_exact_file_copies"] == 1
        assert twin["neg_score"] == 1.0 and twin["neg_nearest_id"] == host.id
        assert twin["neg_influence_z"] == pytest.approx(z[c, t])
        # a pretraining view passed with a run is honoured: without the host, no copy
        without = detect_leakage(tgt, pre.exclude([host.id]), key="neg2", influence_key="infl")
        twin.reload()
        assert without["num_exact_file_copies"] == 0 and without["num_pretrain"] == 59
        assert twin["neg2_nearest_id"] != host.id
    finally:
        host.filepath = original
        host.save()
        for key in ("neg", "neg2"):
            if key in tgt.list_runs():
                tgt.delete_run(key)


def test_a_re_encoded_copy_with_identical_pixels_is_certain_evidence(leaky, tmp_path):
    pre, tgt, planted = leaky
    source = tgt.match_tags("test").sort_by("filepath").skip(5).first()
    copy = str(tmp_path / "re_encoded.bmp")  # other bytes, the same pixels
    Image.open(source.filepath).save(copy)
    assert open(copy, "rb").read() != open(source.filepath, "rb").read()
    pre.add_sample(fo.Sample(filepath=copy, ground_truth=fo.Classification(label="class1")))
    # embeddings that cannot see it (random ones): only the pixels can
    rng = np.random.default_rng(0)
    pre.set_values("emb", list(rng.normal(size=(len(pre), 256)).astype(np.float32)))
    summary = detect_leakage(tgt, pre, key="px", embeddings_field="emb", target_split="test")
    assert summary["num_pixel_copies"] == 1 and summary["num_exact_file_copies"] == 1
    source.reload()
    assert source.id in summary["leak_ids"] and source["px_score"] == 1.0
    assert "1 with identical pixels in other bytes" in summary.describe()[0]


def test_a_cut_calibrated_on_the_train_split_tags_by_distance_alone(leaky):
    pre, tgt, planted = leaky
    n_train = len(tgt.match_tags("train"))
    summary = detect_leakage(
        tgt,
        pre,
        key="cal",
        embeddings_field="emb",
        target_split="test",
        calibration_split="train",
        false_positive_rate=0.1,
        augmentations=None,  # no pixel matching: the embeddings' distance alone
    )
    cal = summary["calibration"]
    assert cal["reference_size"] == n_train and cal["false_positive_rate"] == 0.1
    assert cal["max_distance"] == pytest.approx(2 * cal["cut_distance"])  # threshold 0.5
    assert cal["expected_false_positives"] == pytest.approx(0.1 * 18)
    test = tgt.match_tags("test")
    within = {i for i, d in zip(*test.values(["id", "cal_distance"])) if d <= cal["cut_distance"]}
    assert set(summary["leak_ids"]) == within  # no influence: the distance decides
    assert tgt.get_run_info("cal").config.false_positive_rate == 0.1


def test_with_a_runs_backbone_its_train_split_calibrates_the_cut(tiny_run):
    pre, tgt, _ = tiny_run
    try:
        summary = detect_leakage(tgt, key="cal_run", influence_key="infl", false_positive_rate=0.2)
        cal = summary["calibration"]
        assert cal["reference_size"] == len(tgt.match_tags("train"))
        assert 0 < cal["cut_distance"] and summary["num_targets"] == 18
        with pytest.raises(TransferScopeError, match="calibration_split is not used"):
            detect_leakage(
                tgt, key="x", influence_key="infl", false_positive_rate=0.2, calibration_split="t"
            )
    finally:
        if "cal_run" in tgt.list_runs():
            tgt.delete_run("cal_run")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(false_positive_rate=0), r"false_positive_rate must be a finite number in \(0, 1\)"),
        (dict(false_positive_rate=1.5), r"false_positive_rate must be a finite number in \(0, 1\)"),
        (dict(false_positive_rate=0.1, max_distance=0.05), "not both"),
        (dict(false_positive_rate=0.1), "needs reference images that are not leaks"),
        (dict(calibration_split="train"), "used only with false_positive_rate"),
        (
            dict(false_positive_rate=0.1, calibration_split="test"),
            "calibration_split shares 18 sample",
        ),
        (
            dict(false_positive_rate=0.001, calibration_split="train"),
            r"0.001 \(half of it for each .*needs at least 1999",
        ),
        (
            dict(false_positive_rate=0.001, calibration_split="train", augmentations=None),
            "false_positive_rate 0.001 needs at least 999",
        ),
        (dict(augmentations="sharpen"), r"augmentations must be one of \['none', 'shifts'"),
        (dict(augmentations=["standard"]), "augmentations must be one of"),
        (dict(match_threshold=1.0), r"match_threshold must be a finite number in \(0, 1\)"),
        (dict(match_threshold=-0.2), r"match_threshold must be a finite number in \(0, 1\)"),
    ],
)
def test_bad_calibration_is_refused_by_name_and_changes_nothing(leaky, kwargs, message):
    pre, tgt, _ = leaky
    with pytest.raises(TransferScopeError, match=message):
        detect_leakage(
            tgt, pre, key="bad_cal", embeddings_field="emb", target_split="test", **kwargs
        )
    assert "bad_cal" not in tgt.list_runs() and not tgt.has_sample_field("bad_cal_score")


def test_the_leakage_operator_calibrates_its_cut(leaky):
    pre, tgt, _ = leaky
    params = dict(
        source="field",
        embeddings_field="emb",
        pretrain_dataset=pre.name,
        target_split="test",
        cut="calibrated",
        false_positive_rate=0.2,  # 0.1 each for the embeddings and the pixels: 12 references
        calibration_split="train",
        max_distance=0.05,  # left from the other choices: not used
        match_threshold=0.5,
        run_key="op_cal",
    )
    out = foo.execute_operator(f"{PLUGIN}/detect_leakage", ctx=dict(dataset=tgt, params=params))
    assert out.error is None, out.error
    config = tgt.get_run_info("op_cal").config
    assert config.false_positive_rate == 0.2 and config.max_distance != 0.05
    assert config.augmentations == "standard" and config.match_threshold not in (None, 0.5)
    with pytest.raises(Exception, match="calibration_split"):  # required by the form
        foo.execute_operator(
            f"{PLUGIN}/detect_leakage",
            ctx=dict(dataset=tgt, params=dict(params, calibration_split=None, run_key="x")),
        )
    assert "x" not in tgt.list_runs()


def test_a_rotated_copy_is_matched_by_its_pixels_and_named_by_its_transformation(leaky, tmp_path):
    pre, tgt, planted = leaky
    source = tgt.match_tags("test").sort_by("filepath").skip(5).first()
    path = str(tmp_path / "rotated.png")
    Image.open(source.filepath).rotate(8, resample=Image.BILINEAR).save(path)
    copy = fo.Sample(filepath=path, ground_truth=fo.Classification(label="class5"))
    pre.add_sample(copy)
    copy["emb"] = _pixels([path])[0]
    copy.save()
    summary = detect_leakage(tgt, pre, key="rot", embeddings_field="emb", target_split="test")
    source.reload()
    assert set(summary["leak_ids"]) == planted | {source.id}
    assert source["rot_nearest_id"] == copy.id and source["rot_transform"].startswith("rotate")
    assert source["rot_match"] >= 0.98 and summary["num_transformed_copies"] >= 1
    assert tgt.get_run_info("rot").config.augmentations == "standard"
    # without the transformations, the same cut does not see it
    plain = detect_leakage(
        tgt, pre, key="rot_plain", embeddings_field="emb", target_split="test", augmentations="none"
    )
    assert source.id not in plain["leak_ids"] and planted <= set(plain["leak_ids"])


def test_transformed_copies_join_their_sources_near_duplicate_group(leaky, tmp_path):
    pre, _, _ = leaky
    # a source unlike the others (the tiny classes' images are one bar pattern
    # each, with light noise: near-duplicates of each other in their pixels)
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.random((16, 16)), 1)
    disk = np.hypot(*np.mgrid[-7.5:8.5, -7.5:8.5]) < 6  # on a black ground, as scans are
    img = Image.fromarray(((blobs - blobs.min()) / np.ptp(blobs) * 255 * disk).astype(np.uint8))
    shrunk = Image.new("L", (16, 16), 0)
    shrunk.paste(img.resize((14, 14), Image.BILINEAR), (1, 1))
    # two pairs of copies, each copy the other's best match: linking only best
    # matches would leave one pair in a group of its own
    copies = {
        "unique": img,
        "rotated": img.rotate(-12, resample=Image.BILINEAR),
        "rotated_again": img.rotate(-11, resample=Image.BILINEAR),
        "shrunk": shrunk,
        "shrunk_brighter": Image.fromarray((np.asarray(shrunk) * 0.9 + 10).astype(np.uint8)),
    }
    paths = [str(tmp_path / f"{name}.png") for name in copies]
    for path, copy in zip(paths, copies.values()):
        copy.save(path)
    added = [fo.Sample(filepath=p, ground_truth=fo.Classification(label="class0")) for p in paths]
    pre.add_samples(added, progress=False)
    pre.select([s.id for s in added]).set_values("emb", _pixels(paths))
    summary = find_near_duplicates(
        pre, key="pix_dups", embeddings_field="emb", augmentations="standard"
    )
    source, *others = (pre[s.id] for s in added)
    assert source["pix_dups_group"] is not None
    # every copy in the source's group, not only the pairs of best matches
    assert [o["pix_dups_group"] for o in others] == [source["pix_dups_group"]] * 4
    assert summary["num_pixel_pairs"] >= 8
    group = pre.match(fo.ViewField("pix_dups_group") == source["pix_dups_group"])
    assert len(group) == 5, group.values("filepath")
    plain = find_near_duplicates(pre, key="emb_dups", embeddings_field="emb")  # pixels off
    assert plain["num_pixel_pairs"] == 0 and pre[source.id]["emb_dups_group"] is None
