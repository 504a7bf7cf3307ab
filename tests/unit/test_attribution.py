"""Example-level attribution (compute.attribution): the probe as a layer, the
TRAK scores against the formula computed here by hand, resumable models."""

import numpy as np
import pytest
import torch
from transferscope.compute import attribution as attr
from transferscope.compute.config import InfluenceConfig
from transferscope.compute.train import TransferData, fit_probe, probe_layer, probe_logits


def _images(labels, rng, size=16):
    x = rng.normal(0.3, 0.1, (len(labels), size, size, 1))
    for i, c in enumerate(labels):
        x[i, 2 + 2 * c : 4 + 2 * c, 2 : size - 2, 0] += 0.6
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    pre = np.repeat(np.arange(6), 10)
    train, test = np.repeat(np.arange(3), 4), np.repeat(np.arange(3), 6)
    return TransferData(
        _images(pre, rng), pre, 6, _images(train * 2, rng), train, _images(test * 2, rng), test, 3
    )


# fp32 pinned: "auto" is bf16 on CPUs with AMX, and the thresholds below were
# set on fp32 models (the projection, not the precision, is under test)
CONFIG = InfluenceConfig(
    num_models=4,
    epochs=2,
    width=4,
    batch_size=16,
    seed=0,
    channels=1,
    image_size=16,
    precision="fp32",
)


@pytest.fixture(scope="module")
def models(data, tmp_path_factory):
    models = attr.AttributionModels(str(tmp_path_factory.mktemp("attr") / "models"), 2)
    models.train_pending(CONFIG, data)
    return models


@pytest.mark.parametrize("classes", [[0, 1, 2], [0, 2], [1, 2, 3]])
def test_the_probe_as_a_layer_gives_the_probes_logits(classes):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 5)) * [1, 2, 3, 4, 5] + 3
    labels = np.resize(np.asarray(classes), 40)

    class Identity(torch.nn.Module):
        def features(self, x):
            return x

    probe = fit_probe(Identity(), torch.from_numpy(features), labels, 1.0, torch.device("cpu"))
    expected = probe_logits(probe, features, 4)
    layer = probe_layer(probe, 5, 4).double()
    got = layer(torch.from_numpy(features)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def _margin(logits, label):
    others = torch.cat([logits[:label], logits[label + 1 :]])
    return logits[label] - others.logsumexp(0)


def _per_sample_grads(model, x, y, names):
    params = dict(model.named_parameters())
    rows = []
    for xi, yi in zip(x, y):
        out = model(xi[None])[0]
        grads = torch.autograd.grad(_margin(out, int(yi)), [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).double()


@pytest.mark.parametrize("loss_weighting", ["none", "trak"])
def test_trak_scores_are_the_transfer_formula_computed_by_hand(
    data, models, tmp_path, loss_weighting
):
    """One model, no projection: scores = Q * G (G'G + damping)^-1 Gt', with G the
    pretraining margins' gradients, Gt the transferred margins' gradients, both
    with respect to the backbone only, and Q = 1 - p(correct pretraining class)
    with TRAK's loss weighting, 1 without it."""
    one = attr.AttributionModels(models.folder, 1)
    damping = 0.05
    scores = attr.trak_scores(
        CONFIG, data, one, str(tmp_path / "trak"), 10**6, damping, loss_weighting=loss_weighting
    )
    assert scores.shape == (60, 18) and scores.dtype == np.float32

    state = attr.load_model(one.path(0))
    model = attr.attribution_network(CONFIG, data).eval()
    names = model.backbone_parameter_names()
    t = {k: v[:] for k, v in data.tensors(torch.device("cpu")).items()}
    model.load_state_dict(state["pretrained"])
    g = _per_sample_grads(model, t["pretrain"], data.pretrain_labels, names)
    with torch.no_grad():
        p = torch.softmax(model(t["pretrain"]).double(), 1)[torch.arange(60), data.pretrain_labels]
    model.load_state_dict(state["transferred"])
    model.target = True
    g_target = _per_sample_grads(model, t["test"], data.test_labels, names)
    xtx = g.T @ g
    ridge = damping * torch.diagonal(xtx).mean() * torch.eye(len(xtx), dtype=xtx.dtype)
    weight = (1 - p) if loss_weighting == "trak" else torch.ones_like(p)
    expected = ((g @ torch.linalg.inv(xtx + ridge) @ g_target.T) * weight[:, None]).numpy()

    # traker rescales each model's inverse by a constant: compare up to a positive scale
    scale = float((scores * expected).sum() / (expected * expected).sum())
    assert scale > 0
    np.testing.assert_allclose(scores, scale * expected, rtol=0, atol=2e-3 * np.abs(scores).max())


def test_a_projection_keeps_the_scores_ranking(data, models, tmp_path):
    exact = attr.trak_scores(CONFIG, data, models, str(tmp_path / "exact"), 10**6)
    projected = attr.trak_scores(CONFIG, data, models, str(tmp_path / "projected"), 2048)
    assert not np.allclose(exact, projected)
    corr = np.corrcoef(exact.ravel(), projected.ravel())[0, 1]
    assert corr > 0.9, corr


def test_one_model_with_a_projection_scores_like_one_model_without(data, tmp_path):
    one = attr.AttributionModels(str(tmp_path / "one"), 1)
    one.train_pending(CONFIG, data)
    exact = attr.trak_scores(CONFIG, data, one, str(tmp_path / "exact"), 10**6)
    projected = attr.trak_scores(CONFIG, data, one, str(tmp_path / "projected"), 2048)
    corr = np.corrcoef(exact.ravel(), projected.ravel())[0, 1]
    assert corr > 0.9, corr


def test_a_model_on_disk_is_not_trained_again_and_a_lost_one_comes_back_the_same(
    data, models, tmp_path
):
    again = attr.AttributionModels(models.folder, 3)
    assert again.pending() == [2]
    before = attr.load_model(models.path(1))
    import shutil

    copy = attr.AttributionModels(str(tmp_path / "copy"), 2)
    shutil.copytree(models.folder, copy.folder)
    (tmp_path / "copy" / "model-0001.pt").unlink()
    assert copy.train_pending(CONFIG, data) == [1]
    after = attr.load_model(copy.path(1))
    for side in ("pretrained", "transferred"):
        for name, value in before[side].items():
            assert torch.equal(value, after[side][name]), (side, name)


def test_the_transferred_margin_is_the_probes_margin(data, models):
    state = attr.load_model(models.path(0))
    margins = attr.transferred_margins(CONFIG, data, state)
    assert margins.shape == (18,) and np.isfinite(margins).all()
    # a trained probe separates the easy target classes: most margins positive
    assert (margins > 0).mean() > 0.5


@pytest.mark.parametrize(
    "options, message",
    [
        ((0, 2048, 0.01), "num_models"),
        ((4, 0, 0.01), "proj_dim"),
        ((4, 2048, -1.0), "damping"),
        ((4, 2048, float("nan")), "damping"),
        ((4, 2048, 0.1, "TRAK"), "loss_weighting must be one of"),
        ((4, 2048, 0.1, None), "loss_weighting must be one of"),
    ],
)
def test_attribution_options_out_of_range_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        attr.check_attribution_options(*options)


def test_the_example_datamodeling_score_finds_a_planted_linear_truth():
    from transferscope.compute.estimators import example_datamodeling_score

    rng = np.random.default_rng(0)
    masks = attr.holdout_sample_masks(16, 200, seed=0)
    assert masks.shape == (16, 200) and (masks.sum(axis=1) == 100).all()
    truth = rng.normal(size=(200, 30))
    outputs = masks @ truth + rng.normal(scale=1.0, size=(16, 30))
    right = example_datamodeling_score(truth, masks, outputs)
    wrong = example_datamodeling_score(rng.normal(size=(200, 30)), masks, outputs)
    assert right["lds"] > 0.8 and abs(wrong["lds"]) < 0.3, (right, wrong)
    assert right["num_heldout"] == 16 and right["num_targets"] == 30


def test_the_weighting_names_its_own_scores_file_and_trak_keeps_the_old_name():
    old_name = attr.scores_name(2048, 0.1, "trak")
    assert old_name == f"scores-{attr.digest('[2048, 0.1]', length=12)}.npy"
    assert attr.scores_name(2048, 0.1) != old_name
    assert attr.scores_name(2048, 0.1, "none") == attr.scores_name(2048, 0.1)


def test_scoring_leaves_the_processs_logging_as_it_was(data, models, tmp_path):
    import logging

    before = list(logging.getLogger().handlers)
    attr.trak_scores(CONFIG, data, models, str(tmp_path / "trak"), 2048)
    assert logging.getLogger().handlers == before
