"""Class selection, the counterfactual plan and its statistics (no FiftyOne)."""

import numpy as np
import pytest
from transferscope.compute import curation as cur

NAMES = ["a", "b", "c", "d", "e", "f"]
INFL = np.array([0.02, -0.05, 0.01, -0.01, 0.04, -0.03])
CI_HIGH = np.array([0.03, -0.02, 0.02, 0.01, 0.05, -0.001])


def test_rules_select_the_right_classes_most_harmful_first():
    sel = lambda **kw: [NAMES[i] for i in cur.select_classes(NAMES, INFL, CI_HIGH, **kw)]
    assert sel(rule="most_harmful", k=2) == ["b", "f"]
    assert sel(rule="below_threshold", threshold=0.0) == ["b", "f", "d"]
    assert sel(rule="ci_below_zero") == ["b", "f"]
    assert sel(rule="classes", classes=["e", "b"]) == ["b", "e"]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(rule="most_harmful", k=0), "k must be an integer from 1 to 4"),
        (dict(rule="most_harmful", k=5), "k must be an integer from 1 to 4"),
        (dict(rule="most_harmful", k=2.0), "k must be an integer"),
        (dict(rule="below_threshold", threshold=-0.1), "no class has influence below -0.1"),
        (dict(rule="below_threshold", threshold=float("nan")), "finite number"),
        (dict(rule="classes", classes=["zz"]), "unknown pretraining class"),
        (dict(rule="classes", classes=[]), "non-empty list"),
        (dict(rule="nope"), "rule must be one of"),
    ],
)
def test_bad_selections_name_the_problem(kw, message):
    with pytest.raises(ValueError, match=message):
        cur.select_classes(NAMES, INFL, CI_HIGH, **kw)


def test_ci_rule_that_selects_nothing_says_so():
    with pytest.raises(ValueError, match="no class's confidence interval lies below zero"):
        cur.select_classes(NAMES, INFL, np.abs(CI_HIGH), rule="ci_below_zero")


def test_plan_pairs_arms_by_seed_and_shares_identical_models():
    plan = cur.plan_curation(INFL, removed=[1, 5], num_seeds=3, sweep_ks=[1, 2])
    # curated == the 2 most harmful: the same models, trained once
    assert plan.cell("curated", 2)["rows"] == plan.cell("harmful_first", 2)["rows"]
    full = plan.cell("full", 0)["rows"]
    assert plan.masks[full].all() and list(plan.seeds[full]) == [0, 1, 2]
    for c in plan.cells:  # row s of every arm is seed s
        assert list(plan.seeds[c["rows"]]) == [0, 1, 2]
        assert ((~plan.masks[c["rows"]]).sum(axis=1) == c["k"]).all()
    helpful = plan.masks[plan.cell("helpful_first", 1)["rows"][0]]
    assert not helpful[4] and helpful.sum() == 5  # 'e' is the most helpful
    # random removal: its own draw per seed, and the same draw wherever k repeats
    rnd = plan.masks[plan.cell("random", 2)["rows"]]
    assert len({r.tobytes() for r in rnd}) > 1
    again = cur.plan_curation(INFL, removed=[1, 5], num_seeds=3, sweep_ks=[2])
    np.testing.assert_array_equal(again.masks[again.cell("random", 2)["rows"]], rnd)
    # unique rows only
    assert len({(m.tobytes(), s) for m, s in zip(plan.masks, plan.seeds)}) == len(plan.masks)
    assert plan.fingerprint() != again.fingerprint()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(removed=[1], num_seeds=1), "num_seeds must be an integer >= 2"),
        (dict(removed=[], num_seeds=2), "removed must be distinct"),
        (dict(removed=[1, 1], num_seeds=2), "removed must be distinct"),
        (dict(removed=[0, 1, 2, 3, 4], num_seeds=2), "the number of removed classes"),
        (dict(removed=[1], num_seeds=2, sweep_ks=[9]), "every sweep k"),
    ],
)
def test_bad_plans_name_the_problem(kw, message):
    with pytest.raises(ValueError, match=message):
        cur.plan_curation(INFL, **kw)


def test_summary_reports_paired_differences_with_intervals():
    plan = cur.plan_curation(INFL, removed=[1], num_seeds=8)
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.05, 8)  # large, shared by every arm of a seed
    acc = np.empty(len(plan.masks))
    shift = {
        "full": 0.0,
        "curated": 0.02,
        "harmful_first": 0.02,
        "helpful_first": -0.03,
        "random": -0.001,
        "each": 0.02,
    }
    for c in plan.cells:
        acc[c["rows"]] = 0.8 + seed_effect + shift[c["arm"]] + rng.normal(0, 0.002, 8)
    s = cur.summarize_curation(plan, acc, NAMES)
    assert s["removed"] == ["b"] and s["num_removed"] == 1 and s["num_seeds"] == 8
    vs_full = s["curated_vs_full"]
    assert vs_full["diff"] == pytest.approx(0.02, abs=0.005)
    # pairing removes the seed effect: a tight interval above zero
    assert 0 < vs_full["ci95"][0] < vs_full["ci95"][1] < 0.04
    assert vs_full["verdict"] == "confirmed" and vs_full["wins"] == 8
    assert s["most_helpful_removed_vs_full"]["diff"] < 0
    full = next(c for c in s["cells"] if c["arm"] == "full")
    assert full["ci95"][0] < full["accuracy"] < full["ci95"][1]
    # unpaired, the seed effect would swamp the difference
    assert full["ci95"][1] - full["ci95"][0] > vs_full["ci95"][1] - vs_full["ci95"][0]
    # the one curated class, removed alone, is confirmed
    assert [row["class"] for row in s["each_removed_vs_full"]] == ["b"]
    assert s["confirmed"] == ["b"]


def test_each_curated_class_is_retrained_alone_and_confirmed_only_by_its_own_interval():
    plan = cur.plan_curation(INFL, removed=[1, 5], num_seeds=8)
    each = [c for c in plan.cells if c["arm"] == "each"]
    assert [c["class"] for c in each] == [1, 5]
    for c in each:
        assert (plan.masks[c["rows"]].sum(axis=1) == 5).all()
        assert not plan.masks[c["rows"]][:, c["class"]].any()
    assert plan.cell("each", 1, 5) is each[1]
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 0.05, 8)
    acc = 0.8 + seed_effect[plan.seeds] + rng.normal(0, 0.002, len(plan.seeds))
    acc[each[0]["rows"]] += 0.03  # removing b helps; removing f does nothing
    s = cur.summarize_curation(plan, acc, NAMES)
    assert s["confirmed"] == ["b"]
    rows = {r["class"]: r for r in s["each_removed_vs_full"]}
    assert rows["b"]["ci95"][0] > 0 and rows["f"]["ci95"][0] < 0 < rows["f"]["ci95"][1]
    # two classes checked alone: each decided at alpha / 2, so any false
    # confirmation among them has probability at most alpha
    assert rows["b"]["decision"]["alpha"] == rows["f"]["decision"]["alpha"] == 0.025
    assert rows["f"]["verdict"] == "negligible"  # within +-1 point at the default
    no_each = cur.plan_curation(INFL, removed=[1, 5], num_seeds=5, each=False)
    assert not any(c["arm"] == "each" for c in no_each.cells)


def test_fdr_rule_selects_harmful_classes_below_the_level():
    q = np.array([0.5, 0.01, 0.02, 0.09, 0.2, 0.08])
    sel = lambda **kw: [
        NAMES[i] for i in cur.select_classes(NAMES, INFL, CI_HIGH, q_values=q, **kw)
    ]
    assert sel(rule="harmful_fdr") == ["b", "f", "d"]  # c has q 0.02 but helps
    assert sel(rule="harmful_fdr", fdr_level=0.05) == ["b"]
    with pytest.raises(
        ValueError,
        match="no class is harmful at false-discovery level 0.001 "
        r"\(the lowest q of a harmful class: 'b' at 0.01\)",
    ):
        sel(rule="harmful_fdr", fdr_level=0.001)
    for bad in (0, 1, 1.5, -0.1, "0.1", True, None):
        with pytest.raises(ValueError, match="fdr_level must be a finite number in"):
            sel(rule="harmful_fdr", fdr_level=bad)
    with pytest.raises(ValueError, match="needs the classes' q-values"):
        cur.select_classes(NAMES, INFL, CI_HIGH, rule="harmful_fdr")


def test_paired_comparison_without_spread():
    t = cur.paired_comparison([0.5, 0.5], [0.5, 0.5])
    assert t["diff"] == 0 and t["p_value"] == 1.0 and t["wins"] == 0


def test_sweep_arms_stop_at_sweep_seeds_and_verdict_arms_go_on():
    plan = cur.plan_curation(INFL, removed=[1], num_seeds=12, sweep_ks=[2, 3], sweep_seeds=4)
    assert len(plan.cell("full", 0)["rows"]) == 12
    for arm in ("harmful_first", "helpful_first", "random"):  # at the curated k: verdicts
        assert len(plan.cell(arm, 1)["rows"]) == 12
    for arm in ("harmful_first", "helpful_first", "random"):
        assert len(plan.cell(arm, 3)["rows"]) == 4
    # the rows of a seed do not depend on how many seeds are planned
    small = cur.plan_curation(INFL, removed=[1], num_seeds=4, sweep_ks=[2, 3], sweep_seeds=4)
    rows = lambda p: {(m.tobytes(), s) for m, s in zip(p.masks, p.seeds)}
    assert rows(small) <= rows(plan)
