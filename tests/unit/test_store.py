"""The store's manifest: what transferscope wrote in a folder, and nothing else."""

import json
import os

import pytest
from transferscope.compute import store


@pytest.mark.parametrize("entry", ["../outside.txt", "/etc/hostname", "a/b", "..", "", "x\0y"])
def test_a_tampered_manifest_is_refused_and_nothing_is_deleted(tmp_path, entry):
    folder = tmp_path / "run"
    folder.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("a user's file")
    (folder / "a").mkdir()
    (folder / "a" / "b").write_text("inside, but not ours by name")
    (folder / "mine.npy").write_text("ours")
    (folder / store.MANIFEST).write_text(json.dumps(["mine.npy", entry]))
    with pytest.raises(store.StoreCorruptError, match="not plain names"):
        store.clear_dir(str(folder))
    assert outside.read_text() == "a user's file"
    assert (folder / "a" / "b").exists() and (folder / "mine.npy").exists()


def test_a_plain_manifest_clears_only_its_entries(tmp_path):
    folder = tmp_path / "run"
    store.save_array(str(folder), "mine.npy", [1, 2, 3])
    (folder / "theirs.txt").write_text("a user's file")
    store.clear_dir(str(folder))
    assert sorted(os.listdir(folder)) == ["theirs.txt"]


def test_making_folders_writes_nothing_in_a_folder_that_is_not_ours(tmp_path):
    users = tmp_path / "data"
    users.mkdir()
    store.make_dirs(str(users / "runs" / "a" / "b"))
    assert os.listdir(users) == ["runs"]  # no manifest in the user's folder
    assert json.loads((users / "runs" / store.MANIFEST).read_text()) == ["a"]
    assert json.loads((users / "runs" / "a" / store.MANIFEST).read_text()) == ["b"]
    # inside a folder transferscope made, new folders are claimed as before
    store.make_dirs(str(users / "runs" / "c"))
    assert json.loads((users / "runs" / store.MANIFEST).read_text()) == ["a", "c"]
