"""Training reads uint8 images batch by batch (no float copy of a split), and
memory-mapped images travel to other processes by path."""

import pickle
import tracemalloc

import numpy as np
import pytest
import torch
from transferscope.compute import InfluenceConfig, TransferData, train, train_subset_model
from transferscope.compute.train import MappedArrayFile, NormalisedImages, channel_mean_std


def float_split(images, mean, std):
    """The normalised float32 NCHW copy that training held before."""
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def test_normalised_images_index_as_the_float_split_would():
    images = np.random.default_rng(0).integers(0, 256, (50, 8, 6, 3), dtype=np.uint8)
    mean, std = channel_mean_std(images)
    full = float_split(images, mean, std)
    lazy = NormalisedImages(images, (mean, std), "cpu")
    assert len(lazy) == 50 and lazy.shape == (50, 3, 8, 6)
    assert torch.equal(lazy[5:17], full[5:17])
    rows = torch.tensor([3, 1, 4, 1])
    assert torch.equal(lazy[rows], full[rows])
    grid = torch.tensor([[0, 2, 9], [49, 7, 7]])
    assert torch.equal(lazy[grid], full[grid])
    assert lazy[grid].shape == (2, 3, 3, 8, 6)
    as_double = lazy.to(torch.float64)[rows]
    assert as_double.dtype == torch.float64
    assert torch.equal(as_double, full[rows].double())


def test_chunked_statistics_agree_with_the_exact_ones(monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (301, 5, 7, 3), dtype=np.uint8)
    scaled = images / 255.0  # float64: the truth both are measured against
    exact_mean, exact_std = channel_mean_std(images)
    monkeypatch.setattr(train, "EXACT_STATISTICS_VALUES", 0)
    monkeypatch.setattr(train, "STATISTICS_CHUNK_VALUES", 1000)  # 9 images a chunk
    mean, std = channel_mean_std(images)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-7)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 1, 2)) + 1e-6, rtol=1e-7)
    # numpy's float32 sums (the exact path) are within a few float32 ulps
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-5)
    np.testing.assert_allclose(std, exact_std, rtol=1e-5)


def test_training_on_a_memory_mapped_split_makes_no_float_copy_of_it(tmp_path, monkeypatch):
    """numpy reports its allocations to tracemalloc: the float32 copy of the
    pretraining split (4x its bytes) that training built before shows up."""
    rng = np.random.default_rng(2)
    pretrain = rng.integers(0, 256, (12000, 16, 16, 1), dtype=np.uint8)
    np.save(tmp_path / "pretrain.npy", pretrain)
    mapped = np.load(tmp_path / "pretrain.npy", mmap_mode="r")
    target = rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    data = TransferData(
        mapped, np.arange(12000) % 8, 8, target, np.arange(40) % 2, target, np.arange(40) % 2, 2
    )
    monkeypatch.setattr(train, "EXACT_STATISTICS_VALUES", 0)
    monkeypatch.setattr(train, "STATISTICS_CHUNK_VALUES", 2**14)
    config = InfluenceConfig(num_models=2, epochs=1, width=4, batch_size=64, device="cpu")
    mask = np.arange(8) % 2 == 0
    small = TransferData(
        target, np.arange(40) % 8, 8, target, data.train_labels, target, data.test_labels, 2
    )
    train_subset_model(config, 0, mask, small)  # the lazy imports of a first model
    tracemalloc.start()
    train_subset_model(config, 0, mask, data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < pretrain.nbytes / 2, f"peak {peak} bytes against {pretrain.nbytes} of uint8"


@pytest.mark.parametrize("transfer", ["linear", "finetune"])
def test_a_memory_mapped_split_trains_the_same_model_as_one_in_memory(tmp_path, transfer):
    rng = np.random.default_rng(3)
    pretrain = rng.integers(0, 256, (240, 12, 12, 3), dtype=np.uint8)
    target = rng.integers(0, 256, (30, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "pretrain.npy", pretrain)
    labels = (np.arange(240) % 6, np.arange(30) % 3)

    def data(images):
        return TransferData(images, labels[0], 6, target, labels[1], target, labels[1], 3)

    config = InfluenceConfig(
        num_models=2,
        epochs=1,
        width=4,
        batch_size=32,
        device="cpu",
        channels=3,
        image_size=12,
        transfer=transfer,
        augment_shift=1,
    )
    mask = np.array([1, 1, 0, 1, 0, 1], bool)
    a = train_subset_model(config, 1, mask, data(pretrain))
    b = train_subset_model(config, 1, mask, data(np.load(tmp_path / "pretrain.npy", mmap_mode="r")))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def mapped_data(folder, train_in_memory=False):
    rng = np.random.default_rng(4)
    arrays = {}
    for name, n in (("pretrain", 300), ("train", 20), ("test", 20)):
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        np.save(folder / f"{name}.npy", images)
        arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
    if train_in_memory:
        arrays["train"] = np.array(arrays["train"])
    labels = np.arange(300) % 6, np.arange(20) % 2
    return TransferData(
        arrays["pretrain"], labels[0], 6, arrays["train"], labels[1], arrays["test"], labels[1], 2
    )


def test_by_reference_ships_mapped_images_as_their_paths(tmp_path):
    data = mapped_data(tmp_path, train_in_memory=True)
    by_value = pickle.dumps(data)
    by_path = pickle.dumps(data.by_reference())
    assert len(by_value) > data.pretrain_images.nbytes
    # the in-memory train split still travels by value; the mapped ones as paths
    assert len(by_path) < data.train_images.nbytes + 4000
    there = pickle.loads(by_path)
    assert isinstance(there.pretrain_images, np.memmap)
    assert there.pretrain_images.filename == data.pretrain_images.filename
    for name in ("pretrain_images", "train_images", "test_images"):
        np.testing.assert_array_equal(getattr(there, name), getattr(data, name))
    assert there.fingerprint() == data.fingerprint()


def test_a_view_of_a_mapped_file_is_not_shipped_by_path(tmp_path):
    data = mapped_data(tmp_path)
    assert MappedArrayFile.of(data.pretrain_images) is not None
    assert MappedArrayFile.of(data.pretrain_images[:100]) is None  # offset would be wrong
    assert MappedArrayFile.of(np.asarray(data.test_images) + 0) is None


def test_a_missing_or_changed_file_is_refused_by_name(tmp_path):
    data = mapped_data(tmp_path)
    blob = pickle.dumps(data.by_reference())
    (tmp_path / "test.npy").rename(tmp_path / "moved.npy")
    with pytest.raises(FileNotFoundError, match="test.npy is not on this machine.*object_store"):
        pickle.loads(blob)
    np.save(tmp_path / "test.npy", np.zeros((21, 8, 8, 3), np.uint8))
    with pytest.raises(RuntimeError, match="test.npy changed after the driver mapped it"):
        pickle.loads(blob)
