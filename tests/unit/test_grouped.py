"""Grouped training (many subset models as one batched computation), on the CPU.

The GPU is where grouping pays; the arithmetic is the same on a CPU, so the
equivalence with the one-at-a-time path is checked here.
"""

import json

import numpy as np
import pytest
import torch
from transferscope.compute import InfluenceConfig, LocalExecutor, make_executor, train_subset_model
from transferscope.compute.executors import ModelJob
from transferscope.compute.grouped import (
    auto_group_size,
    group_size_for_memory,
    pretrain_group,
    train_subset_models_grouped,
)
from transferscope.compute.train import TransferData, pretrain_network


def uneven_data(seed=0):
    """Classes of different sizes, so models see different sample counts and
    epochs end on short batches."""
    rng = np.random.default_rng(seed)
    sizes = [30, 25, 41, 20, 33, 17]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    images = rng.integers(0, 90, (len(labels), 16, 16, 1), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c : 2 * c + 3] = 255
    y = rng.integers(0, 3, 40)
    x = rng.integers(0, 90, (40, 16, 16, 1), dtype=np.uint8)
    for i, c in enumerate(y):
        x[i, :, 4 * c : 4 * c + 3] = 255
    return TransferData(images, labels, len(sizes), x[:20], y[:20], x[20:], y[20:], 3)


CFG = dict(num_models=4, epochs=2, width=4, batch_size=16, device="cpu")
# different class counts (3, 3, 5) and one model without class 0's samples
MASKS = np.array([[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 1]], bool)


def assert_same_outputs(got, ref):
    np.testing.assert_allclose(got["margin"], ref["margin"], atol=1e-4)
    np.testing.assert_array_equal(got["pred"], ref["pred"])


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def float64(monkeypatch):
    """Both paths in float64: in float32 their rounding differs, and at a
    learning rate of 0.2 such differences grow during training (as they do
    between 1 and 2 threads: up to 0.08 on a weight here), which would hide
    a real difference in the arithmetic; in float64 the paths agree to
    within 1e-8 (asserted below)."""
    torch.set_default_dtype(torch.float64)
    original = TransferData.tensors

    def tensors(self, device):
        return {
            k: v if k == "pretrain_labels" else v.to(torch.float64)
            for k, v in original(self, device).items()
        }

    monkeypatch.setattr(TransferData, "tensors", tensors)
    yield
    torch.set_default_dtype(torch.float32)


def max_difference(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# every training constant away from its default: both paths read them from the config
OTHER_CONSTANTS = dict(
    label_smoothing=0.25, momentum=0.8, warmup_fraction=0.35, bn_momentum=0.3, bn_eps=1e-3
)


@pytest.mark.parametrize("shift, constants", [(0, {}), (2, {}), (0, OTHER_CONSTANTS)])
def test_grouped_pretraining_is_the_one_model_arithmetic(float64, shift, constants):
    data = uneven_data()
    cfg = InfluenceConfig(augment_shift=shift, **constants, **CFG)
    if constants:  # the constants change the network, so agreeing on them means something
        default, _, _ = pretrain_network(InfluenceConfig(**CFG), 0, MASKS[0], data)
        other, _, _ = pretrain_network(cfg, 0, MASKS[0], data)
        assert max_difference(default, other) > 1e-3
    sample_masks = [None, None, np.arange(len(data.pretrain_labels)) % 3 != 0]
    for indices in ([0, 1, 2], [10, 11, 12]):
        nets, _, _, _ = pretrain_group(cfg, indices, MASKS, data, sample_masks)
        for g, index in enumerate(indices):
            alone, _, _ = pretrain_network(cfg, index, MASKS[g], data, sample_masks[g])
            assert nets[g].stem[0].weight.dtype == torch.float64
            assert max_difference(nets[g], alone) < 1e-8, (index, shift)


@pytest.mark.parametrize("transfer", ["linear", "finetune"])
def test_grouped_outputs_match_one_model_at_a_time(float64, transfer):
    data = uneven_data()
    cfg = InfluenceConfig(transfer=transfer, finetune_epochs=2, **CFG)
    grouped = train_subset_models_grouped(cfg, [0, 1, 2], MASKS, data)
    for g in range(3):
        alone = train_subset_model(cfg, g, MASKS[g], data)
        assert_same_outputs(grouped[g], alone)
    # and the models differ from each other (no model copied into another)
    assert not np.allclose(grouped[0]["margin"], grouped[1]["margin"])


def test_executor_groups_and_writes_every_row_once(float64):
    data = uneven_data()
    cfg = InfluenceConfig(**CFG)
    masks = np.array([MASKS[0], MASKS[1], MASKS[2], MASKS[0], MASKS[1]])
    jobs = [ModelJob(row, cfg, row, mask) for row, mask in enumerate(masks)]
    executor = LocalExecutor(group_size=2)
    assert [len(g) for g in executor.groups(jobs, data)] == [2, 2, 1]
    written = []
    failures = executor.run(jobs, data, lambda row, out: written.append((row, out)))
    assert failures == {}
    assert sorted(row for row, _ in written) == [0, 1, 2, 3, 4]
    for row, out in written:
        assert_same_outputs(out, train_subset_model(cfg, row, masks[row], data))


def test_a_failing_model_in_a_group_is_reported_by_row_and_the_others_stored():
    data = uneven_data()
    cfg = InfluenceConfig(**CFG)
    nothing = np.zeros(len(data.pretrain_labels), bool)
    jobs = [
        ModelJob(0, cfg, 0, MASKS[0]),
        ModelJob(1, cfg, 1, MASKS[1], nothing),
        ModelJob(2, cfg, 2, MASKS[2]),
    ]
    written = {}
    failures = LocalExecutor(group_size=3).run(jobs, data, written.__setitem__)
    assert sorted(written) == [0, 2]
    assert list(failures) == [1] and "no samples" in failures[1]


def test_group_sizes():
    # configs that differ are never grouped together; other architectures never
    data = uneven_data()
    a, b = InfluenceConfig(**CFG), InfluenceConfig(**dict(CFG, epochs=1))
    jobs = [ModelJob(0, a, 0, MASKS[0]), ModelJob(1, a, 1, MASKS[1]), ModelJob(2, b, 2, MASKS[2])]
    assert [len(g) for g in LocalExecutor(group_size=8).groups(jobs, data)] == [2, 1]
    tv = InfluenceConfig(**dict(CFG, arch="resnet18"))
    jobs = [ModelJob(i, tv, i, MASKS[i]) for i in range(2)]
    assert [len(g) for g in LocalExecutor(group_size=8).groups(jobs, data)] == [1, 1]
    # "auto" on a CPU: one at a time (grouping measured no faster there)
    assert auto_group_size(a, data, 10) == 1
    assert group_size_for_memory(80e9, 1e9, 100) == 64
    assert group_size_for_memory(80e9, 1e9, 10) == 10
    assert group_size_for_memory(1e9, 4e9, 10) == 1
    with pytest.raises(ValueError, match="group_size"):
        LocalExecutor(group_size=0)
    with pytest.raises(ValueError, match="group_size"):
        make_executor("local", group_size="many")
    with pytest.raises(ValueError, match="resnet_small"):
        train_subset_models_grouped(tv, [0, 1], MASKS[:2], data)


def test_shift_augmentation():
    from transferscope.compute.train import shift_images

    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    out = shift_images(x, torch.tensor([[1, 0], [0, -1]]), 1)
    # image 0 moved one row (last row replicated), image 1 one column the other way
    assert (
        out[0, 0, :3].tolist() == x[0, 0, 1:].tolist()
        and out[0, 0, 3].tolist() == x[0, 0, 3].tolist()
    )
    assert (
        out[1, 0, :, 1:].tolist() == x[1, 0, :, :3].tolist()
        and out[1, 0, :, 0].tolist() == x[1, 0, :, 0].tolist()
    )

    # augmentation changes what a model learns (the same in both paths: above)
    data = uneven_data()
    shifted, _, _ = pretrain_network(InfluenceConfig(augment_shift=2, **CFG), 0, MASKS[0], data)
    plain, _, _ = pretrain_network(InfluenceConfig(**CFG), 0, MASKS[0], data)
    assert max_difference(shifted, plain) > 1e-2
    cfg = InfluenceConfig(augment_shift=2, **CFG)
    # the option is validated, and a run without it keeps its hash
    assert cfg.fingerprint() != InfluenceConfig(**CFG).fingerprint()
    with pytest.raises(ValueError, match="augment_shift"):
        InfluenceConfig(augment_shift=8, image_size=16)
    with pytest.raises(ValueError, match="augment_shift"):
        InfluenceConfig(augment_shift=-1)


def test_grouped_bf16_autocast_runs():
    # the CUDA default is bf16 autocast; the same autocast-under-vmap path on a CPU
    data = uneven_data()
    cfg = InfluenceConfig(precision="bf16", **CFG)
    grouped = train_subset_models_grouped(cfg, [0, 1, 2], MASKS, data)
    for g in range(3):
        alone = train_subset_model(cfg, g, MASKS[g], data)
        assert np.isfinite(grouped[g]["margin"]).all()
        assert (grouped[g]["pred"] == alone["pred"]).mean() >= 0.8


def test_auto_never_groups_on_a_cpu(monkeypatch):
    import transferscope.compute.grouped as grouped

    def no_measuring(*args):
        raise AssertionError("measured on a CPU")

    monkeypatch.setattr(grouped, "_measure_bytes_per_model", no_measuring)
    data = uneven_data()
    for precision in ("auto", "fp32", "bf16"):
        config = InfluenceConfig(**dict(CFG, precision=precision))
        assert auto_group_size(config, data, 100) == 1
        assert [len(g) for g in LocalExecutor().groups(jobs_for(config), data)] == [1, 1, 1]


def jobs_for(config):
    return [ModelJob(i, config, i, MASKS[i]) for i in range(3)]


def test_gpu_group_size_caches_the_memory_per_model(monkeypatch, tmp_path):
    # no GPU here: the device's answers are stubbed; the memory measurement
    # itself (CUDA only) runs when a device is lent (benchmarks/grouped_training.py);
    # the cache file, its keys and its locking are real
    import transferscope.compute.grouped as grouped

    monkeypatch.setenv(grouped.GROUP_SIZE_CACHE_ENV, str(tmp_path / "sizes.json"))
    monkeypatch.setattr(grouped, "resolve_device", lambda device: torch.device("cuda", 0))
    props = type("Props", (), {"name": "Stub GPU", "total_memory": 80e9})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    free = {"bytes": 40e9}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 80e9))
    calls = []

    def measure(config, data, device):
        calls.append(device)
        return int(1e9)

    monkeypatch.setattr(grouped, "_measure_bytes_per_model", measure)
    data = uneven_data()
    config = InfluenceConfig(**CFG)
    assert auto_group_size(config, data, 100) == 32  # 0.8 x 40 GB / 1 GB
    free["bytes"] = 10e9  # the free memory is read at every call, the per-model cost once
    assert auto_group_size(config, data, 100) == 8
    assert auto_group_size(config, data, 3) == 3  # never more than the jobs
    # another seed is the same shape; another width is not
    assert auto_group_size(InfluenceConfig(**dict(CFG, seed=5)), data, 100) == 8
    assert len(calls) == 1
    assert auto_group_size(InfluenceConfig(**dict(CFG, width=8)), data, 100) == 8
    assert len(calls) == 2
    # the cache outlives the process: a JSON file of per-model bytes
    entries = json.loads((tmp_path / "sizes.json").read_text())
    assert sorted(entries.values()) == [int(1e9)] * 2
    # a damaged file is measured over, not trusted; "off" measures at every call
    (tmp_path / "sizes.json").write_text("{not json")
    assert auto_group_size(config, data, 100) == 8 and len(calls) == 3
    monkeypatch.setenv(grouped.GROUP_SIZE_CACHE_ENV, "off")
    auto_group_size(config, data, 100)
    auto_group_size(config, data, 100)
    assert len(calls) == 5


def test_auto_precision_is_bf16_on_cuda_and_cpus_with_matrix_units(monkeypatch):
    import transferscope.compute.train as train

    # read off this CPU (the flag), a bool either way
    assert isinstance(train.cpu_has_matrix_units.__wrapped__(), bool)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert train.resolve_precision(cuda) == "bf16"
    for units, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(train, "cpu_has_matrix_units", lambda units=units: units)
        assert train.resolve_precision(cpu) == expected
        assert train.resolve_precision(cpu, "fp32") == "fp32"
        assert train.resolve_precision(cpu, "bf16") == "bf16"
        with train._autocast(cpu):
            assert torch.is_autocast_enabled("cpu") is units
