"""FAISS neighbours, duplicate groups and leak scores (no FiftyOne)."""

import numpy as np
import pytest
from transferscope.compute import neighbors as nb


def _vectors(n=500, d=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_finds_copies_and_matches_brute_force(kind):
    base = _vectors(2000)
    queries = np.concatenate([base[:50] * 3.0, _vectors(50, seed=1)])  # scaled copies
    index = nb.NeighborIndex(base, kind=kind, device="cpu", center=False)
    dist, idx = index.search(queries, k=3)
    assert (idx[:50, 0] == np.arange(50)).all() and np.allclose(dist[:50, 0], 0, atol=1e-5)
    # brute force cosine distances
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.sort(1 - q @ b.T, axis=1)[:, :3]
    if kind == "flat":
        np.testing.assert_allclose(dist, exact, atol=1e-5)
        assert index.recall(queries) == 1.0
    else:
        assert index.recall(queries, k=1) >= 0.8


def test_auto_kind_and_self_neighbors():
    base = _vectors(300)
    base[10] = base[20]  # an exact duplicate pair
    index = nb.NeighborIndex(base, device="cpu")
    assert index.kind == "flat" and not index.on_gpu
    dist, idx = index.self_neighbors(2)
    assert idx[10, 0] == 20 and idx[20, 0] == 10 and dist[10, 0] < 1e-6
    assert not (idx == np.arange(300)[:, None]).any()


def test_bad_vectors_are_refused_with_the_sample_named():
    base = _vectors(10)
    bad = base.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values, e.g. sample s3"):
        nb.NeighborIndex(bad, device="cpu", ids=[f"s{i}" for i in range(10)])
    with pytest.raises(ValueError, match="non-empty"):
        nb.NeighborIndex(np.zeros((0, 4)), device="cpu")
    index = nb.NeighborIndex(base, device="cpu")
    with pytest.raises(ValueError, match="dimension 8 but the index has 16"):
        index.search(_vectors(3, d=8))
    with pytest.raises(ValueError, match="zero"):
        nb.NeighborIndex(np.ones((4, 3)), device="cpu")  # all equal: zero after centring
    with pytest.raises(ValueError, match="kind must be one of"):
        nb.NeighborIndex(base, kind="lsh", device="cpu")
    if not nb.gpu_available():
        with pytest.raises(RuntimeError, match="no GPU"):
            nb.NeighborIndex(base, device="cuda")


def test_duplicate_groups_are_connected_components():
    groups = nb.duplicate_groups(7, [(5, 6), (0, 2), (2, 4)])
    assert list(groups) == [0, -1, 0, -1, 0, 1, 1]
    assert list(nb.duplicate_groups(3, np.empty((0, 2)))) == [-1, -1, -1]
    assert nb.equal_value_pairs(["a", "b", "a", "c", "a"]).tolist() == [[0, 2], [0, 4]]


def test_near_pairs_with_a_threshold():
    base = _vectors(100)
    base[50] = base[7] + 0.01
    index = nb.NeighborIndex(base, device="cpu")
    pairs = {tuple(sorted(p)) for p in nb.near_pairs(index, 0.01).tolist()}
    assert pairs == {(7, 50)}


def test_leak_scores_combine_distance_and_influence():
    d = np.array([0.0, 0.0, 0.05, 0.2])
    assert nb.leak_scores(d, 0.1).tolist() == [1.0, 1.0, 0.5, 0.0]
    z = np.array([3.0, -3.0, 0.0, 3.0])
    s = nb.leak_scores(d, 0.1, z, influence_weight=0.25)
    # influence only adds suspicion: an exact copy scores 1 even where its class hurts
    assert s[0] == s[1] == 1.0 and s[3] == 0 and s[2] == pytest.approx(0.5)
    raised = nb.leak_scores(d, 0.1, np.array([0.0, 0.0, 3.0, 0.0]), influence_weight=0.25)
    assert 0.5 < raised[2] < 1
    infl = np.array([[0.1, 0.0], [0.0, 0.0], [0.0, 0.3]])
    z = nb.influence_support(infl, np.array([0, 2]))
    assert z[0] > 1 and z[1] > 1
    with pytest.raises(ValueError, match="max_distance"):
        nb.leak_scores(d, 0)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_within_returns_every_neighbour_in_range(kind):
    base = _vectors(400)
    base[100:140] = base[7] + np.random.default_rng(2).normal(0, 0.01, (40, 16))  # a dense clump
    index = nb.NeighborIndex(base, kind=kind, device="cpu", center=False)
    dist, idx = index.within(None, 0.01)
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    exact = 1 - b @ b.T
    np.fill_diagonal(exact, np.inf)
    assert len(idx) == len(dist) == len(base)
    for row in range(len(base)):
        truth = set(np.flatnonzero(exact[row] <= 0.01))
        assert set(idx[row]) == truth and (np.diff(dist[row]) >= 0).all()
        np.testing.assert_allclose(dist[row], exact[row][idx[row]], atol=1e-5)
    assert len(idx[100]) >= 39  # more than the first k = 16: k grew where needed
    # queries given: their own rows are not excluded
    qd, qi = index.within(index.prepare(base[[7, 0]]), 0.01)
    assert 7 in set(qi[0]) and set(qi[0]) - {7} == set(idx[7]) and set(qi[1]) == set(idx[0]) | {0}
    assert index.within(np.zeros((0, 16), np.float32), 0.01) == ([], [])


def test_exact_copies_match_each_target_to_the_first_pretraining_item_with_its_hash():
    rows, matches = nb.exact_copies(["a", None, "b", "a"], ["b", None, "a", "z", "b"])
    assert rows.tolist() == [0, 2, 4] and matches.tolist() == [2, 0, 2]
    rows, matches = nb.exact_copies([None], [None])  # unread files match nothing
    assert rows.shape == (0,) and matches.shape == (0,)


def test_matched_influence_support_is_zero_where_the_target_or_class_is_unknown():
    rng = np.random.default_rng(0)
    infl = rng.normal(size=(4, 6))
    cols, rows = np.array([0, -1, 2, 5]), np.array([1, 3, -1, 0])
    got = nb.matched_influence_support(infl, cols, rows)
    want = nb.influence_support(infl[:, [0, 5]], np.array([1, 0]))
    assert got[[1, 2]].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(got[[0, 3]], want)
    assert nb.matched_influence_support(infl, [-1], [-1]).tolist() == [0.0]


@pytest.mark.parametrize("rate, n", [(0.01, 100), (0.05, 200), (0.001, 2000)])
def test_a_calibrated_cut_holds_its_false_positive_rate_by_simulation(rate, n):
    """Coverage of the cut: non-leaks below it, over 4,000 draws of reference and
    checked distances from a skewed distribution (the method assumes none)."""
    rng = np.random.default_rng(int(rate * 1e4) + n)
    reps, m = 4000, 500
    rates = np.empty(reps)
    for r in range(reps):
        reference = rng.gamma(2.0, 0.01, n)
        checked = rng.gamma(2.0, 0.01, m)
        rates[r] = np.mean(checked <= nb.calibrated_cut(reference, rate))
    mean, se = rates.mean(), rates.std() / np.sqrt(reps)
    k = np.floor(rate * (n + 1))
    assert mean <= rate + 3 * se  # valid
    assert mean == pytest.approx(k / (n + 1), abs=4 * se)  # and exactly as conservative as k says


def test_a_calibrated_cut_refuses_a_rate_its_reference_cannot_support():
    with pytest.raises(ValueError, match="needs at least 999 reference images; there are 100"):
        nb.calibrated_cut(np.linspace(0.1, 1, 100), 0.001)
    with pytest.raises(ValueError, match="false_positive_rate"):
        nb.calibrated_cut(np.linspace(0.1, 1, 100), 1.5)
