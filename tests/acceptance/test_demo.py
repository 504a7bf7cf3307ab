"""The demo end to end: datasets built once, planted truth recovered.

One demo run (module scope) and one test per claim, so that a failing claim
does not hide the others.
"""

import os

import fiftyone as fo
import numpy as np
import pytest
from helpers import REPO_ROOT

from transferscope import demo, demo_data


def test_glyph_classes_cover_the_brief():
    names = [n for n, _ in demo_data.glyph_classes()]
    assert len(names) >= 60 and len(set(names)) == len(names)
    for lookalike in ("O", "0", "l", "1", "S", "5", "B", "8", "Z", "2", "g", "9"):
        assert lookalike in names
    assert demo_data.HARMFUL_CLASS in names and demo_data.LEAK_CLASS in names
    assert len(demo_data.font_paths()) >= 10


@pytest.fixture(scope="module")
def datasets():
    return demo.load_or_build_demo()


@pytest.fixture(scope="module")
def demo_run(datasets):
    lines = []
    _, report = demo.run_demo(out=lines.append)
    text = "\n".join(lines)
    # kept as a test artifact: the demo's figures as this run measured them
    artifacts = os.environ.get(
        "TRANSFERSCOPE_ARTIFACTS_DIR",
        os.path.join(REPO_ROOT, "artifacts"),
    )
    os.makedirs(artifacts, exist_ok=True)
    with open(os.path.join(artifacts, "demo_output.txt"), "w") as f:
        f.write(text)
    return text, report


@pytest.mark.slow
def test_the_demo_datasets_are_built_once_with_the_planted_truth(datasets):
    pre, tgt = datasets
    ids = set(tgt.values("id"))
    again_pre, again_tgt = demo.load_or_build_demo()  # idempotent: nothing rebuilt
    assert set(again_tgt.values("id")) == ids and len(again_pre) == len(pre)
    assert len(tgt) == 1797 and len(pre.distinct("ground_truth.label")) >= 60
    assert len(tgt.match_tags("train")) == 100
    planted = tgt.info["planted"]
    transformed = planted["transformed_leak_kind_by_id"]
    assert len(transformed) == 45 and set(transformed.values()) == {"rotation", "crop", "jpeg"}
    assert len(pre.exists("leak_of")) == len(planted["leak_variants"]) + len(transformed)
    assert set(pre.exists("leak_of").values("leak_of")) == set(planted["leaked_test_ids"]) | set(
        transformed
    )
    # the second leak's copies sit in classes unrelated to their digit
    for v in planted["transformed_leak_variants"]:
        assert not v["class"].isdigit()


@pytest.mark.slow
def test_the_demo_prints_and_saves_its_report(demo_run):
    text, _ = demo_run
    assert os.path.exists(os.path.join(demo.data_dir(), "demo_report.json"))
    assert "Most harmful pretraining classes" in text and "bold" in text


@pytest.mark.slow
def test_the_planted_harmful_class_is_found_at_false_discovery_level_0_1(demo_run):
    _, report = demo_run
    assert report["harmful_rank_from_most_negative"] <= 3
    assert report["harmful_ci95"][1] < 0
    assert report["harmful_q_value"] < 0.1 and "bold" in report["harmful_at_fdr_0.1"]


@pytest.mark.slow
def test_the_default_design_is_one_orthogonal_block_with_intervals_the_halves_agree_with(demo_run):
    _, report = demo_run
    assert report["design"] == "orthogonal" and report["num_models"] == 144
    assert 0.85 <= report["split_half_z_sd"] <= 1.15
    assert report["lds"] is not None and np.isfinite(report["lds"])


@pytest.mark.slow
def test_curation_removes_the_harmful_class_and_retraining_confirms_it(datasets, demo_run):
    pre, _ = datasets
    cur = demo_run[1]["curation"]
    assert cur["harmful_class_removed"] and cur["rule"] == "tagged (harmful_fdr)"
    # every class the default rule selects is checked by its own retraining
    assert set(cur["each_removed_vs_full"]) == set(cur["removed"])
    # Sequential verdicts (tests/unit/test_sequential.py simulates them at the
    # measured effect, +3.3 points at 3.5-3.8 a seed): "confirmed" within the
    # 64-seed budget in 99.98% of runs, "refuted" or "negligible" in none of
    # 4,000; at a smaller true effect (2.5 points) "confirmed" falls to 97%
    # and the rest is "undecided". Asserted: no verdict against the planted
    # truth, and a check that stops only when decided or at its budget.
    bold = cur["each_removed_vs_full"]["bold"]
    assert bold["verdict"] in ("confirmed", "undecided"), bold
    assert cur["curated_vs_full"]["verdict"] in ("confirmed", "undecided")
    decided = bold["verdict"] != "undecided" and cur["curated_vs_full"]["verdict"] != "undecided"
    assert decided or cur["num_seeds"] == demo.CURATION["max_seeds"]
    assert cur["num_seeds"] % 4 == 0 and cur["num_seeds"] >= 8
    assert os.path.getsize(os.path.join(demo.data_dir(), "curation.png")) > 1000
    assert "demo_influence_curated" in fo.load_dataset(pre.name).list_saved_views()


@pytest.mark.slow
def test_removing_the_most_helpful_classes_lowers_accuracy(demo_run):
    # measured: -8.4 points at k=16 with a spread of about 5 points a seed, so
    # the mean of 8 seeds lies below zero at z ~ 4.7 (P > 0.9999); whether its
    # anytime-valid interval excludes zero at 8 seeds is about a 70% chance:
    # reported, not asserted
    helpful = demo_run[1]["curation"]["helpful_first_vs_full_by_k"]
    assert helpful[16]["diff"] < 0


@pytest.mark.slow
def test_the_leak_shows_as_influence_concentrated_on_the_copied_test_samples(datasets, demo_run):
    _, tgt = datasets
    report = demo_run[1]
    conc = report["leak_concentration_by_target_function"]
    assert all(conc[fn]["gap"] > 0 for fn in ("prob", "margin", "correct"))
    # the leaked glyph class is more often the top helpful class of a copied test 7
    # than of the other test 7s
    assert (
        report["leak_class_top1_helpful_fraction_on_copied"]
        > report["leak_class_top1_helpful_fraction_on_other_same_digit"]
    )
    assert fo.load_dataset(tgt.name).has_sample_field("demo_influence_helpful")


@pytest.mark.slow
def test_leakage_finds_the_planted_copies(datasets, demo_run):
    # both planted leaks: the first (ten near-copies of each of 20 test 7s in the
    # glyph class 7) and the second (one rotated, cropped-and-resized or JPEG
    # copy of each of 45 scans, in unrelated classes), at the defaults
    _, tgt = datasets
    leak = demo_run[1]["leakage"]
    assert leak["planted_leaked_tests"] == 65 and leak["recall_first_leak"] >= 0.95
    assert set(leak["recall_by_kind"]) == {"crop", "jpeg", "rotation"}
    assert min(leak["recall_by_kind"].values()) >= 0.9, leak["recall_by_kind"]
    assert leak["precision"] >= 0.9, leak
    assert len(tgt.load_saved_view("demo_leakage_likely_leaks")) == leak["flagged"]
    brain = demo_run[1]["leakage_brain"]  # reported next to ours, on the same embeddings
    assert brain["planted_leaked_tests"] == 65
    assert brain["recall"] == brain["true_positives"] / 65


@pytest.mark.slow
def test_near_duplicates_group_most_planted_copies(datasets, demo_run):
    pre, _ = datasets
    dups = demo_run[1]["near_duplicates"]
    assert dups["groups"] > 0
    assert pre.exists("demo_duplicates_group").count() == dups["grouped_samples"]
    assert dups["planted_copies_grouped"] >= 0.5 * dups["planted_copies"]


@pytest.mark.slow
def test_subpopulations_split_every_digit_and_report_the_planted_styles(datasets, demo_run):
    # How well the k=2 split of the 9s recovers the planted styles is reported,
    # not asserted: at 144 models it is not stable between machines (adjusted
    # Rand index 0.98 on one, 0.60 on another; 1.00 at 288 models), because the
    # styles' effect is small next to `bold`'s, which splits the 9s by ink weight.
    _, tgt = datasets
    subpops = demo_run[1]["subpopulations"]
    assert subpops["samples"] == 170 and np.isfinite(subpops["adjusted_rand_index"])
    assert sum(subpops["planted_style_to_found_group"].values()) == 170
    labels = tgt.match_tags("test").values("demo_subpops.label")
    assert None not in labels and len(set(labels)) == 20  # two groups for each of 10 digits
    assert os.path.getsize(os.path.join(demo.data_dir(), "subpopulations.png")) > 1000
    assert any(v.startswith("demo_subpops 9 / ") for v in tgt.list_saved_views())


@pytest.mark.slow
def test_the_harmful_class_is_the_top_culprit_and_removing_it_fixes_failures(datasets, demo_run):
    _, tgt = datasets
    fails = demo_run[1]["failures"]
    assert fails["top_culprit_is_planted_harmful_class"]
    # measured: 11.9 fixed per model against 5.1 (8 seeds), a gap of many seeds' spread
    assert (
        fails["fixed_per_model_removing_culprit"] > fails["fixed_per_model_removing_random_class"]
    )
    # the verdict on the blamed failures never goes against the planted truth
    assert fails["culprit_verdict"] in ("confirmed", "undecided")
    assert len(tgt.load_saved_view("demo_failures_failures")) == fails["num_failures"]


@pytest.mark.slow
def test_the_diversity_planner_predicts_and_checks_at_the_full_budget(datasets, demo_run):
    pre, _ = datasets
    div = demo_run[1]["diversity"]
    pred, ver = div["prediction"], div["verification"]
    assert pred["K_plan"] * pred["n_plan"] <= 660
    assert set(div["per_budget"]) == {"165", "330", "660"}
    # the check stopped at a look, early only when its verdict was decided
    assert ver["num_seeds"] in range(4, demo.DIVERSITY["max_seeds"] + 1, 4)
    decided = ver["plan_vs_all_classes"]["verdict"] != "undecided"
    assert decided or ver["num_seeds"] == demo.DIVERSITY["max_seeds"]
    assert len(pre.load_saved_view("demo_diversity_plan")) == pred["K_plan"] * pred["n_plan"]


@pytest.mark.slow
def test_sample_influence_puts_a_leaked_scans_copies_among_its_most_helpful_images(
    datasets, demo_run
):
    # measured: recall@10 0.64 against 0.036 for random images of class 7 (with
    # TRAK's 1 - p weighting the copies ranked low: 0.04)
    pre, tgt = datasets
    samples = demo_run[1]["sample_influence"]
    first = samples["first_leak"]
    assert first["leaked_test_images"] == 20
    assert first["recall_at_10"] >= 0.3
    assert first["recall_at_10"] > 5 * first["recall_at_10_random_same_class"]
    # the planted harmful class among the most harmful images is reported, not
    # asserted: it sits near its base rate (0.07 against 0.064), a coin flip
    harmful = samples["harmful_class_images"]
    assert harmful["k"] == 100 and 0 < harmful["base_rate"] < 0.1
    assert pre.has_sample_field("demo_samples_score") and tgt.has_sample_field(
        "demo_samples_helpful"
    )


@pytest.mark.slow
def test_removing_the_most_harmful_images_is_checked_by_retraining(datasets, demo_run):
    # the verdict is reported, not asserted: at 100 of 6,245 images the gain is
    # within the retraining noise. Asserted: the check followed its stopping
    # rule (stopped at a look, and early only when decided)
    pre, _ = datasets
    cur = demo_run[1]["sample_influence"]["curation"]
    budget = demo.SAMPLE_CURATION["max_seeds"]
    assert cur["num_removed"] == 100 and cur["num_seeds"] in (8, 12, 16)
    verdict = cur["curated_vs_full"]["verdict"]
    assert verdict in ("confirmed", "refuted", "negligible", "undecided")
    assert verdict != "undecided" or cur["num_seeds"] == budget
    assert pre.match_tags("remove_image").count() == 100
