import os

import pytest

from transferscope import cli


def test_install_plugin_links_and_relinks(tmp_path):
    link = cli.install_plugin(str(tmp_path))
    assert os.path.realpath(link) == os.path.realpath(cli.plugin_root())
    assert cli.install_plugin(str(tmp_path)) == link  # idempotent
    os.remove(link)
    os.symlink(str(tmp_path), link)  # a link to some other checkout
    cli.install_plugin(str(tmp_path))
    assert os.path.realpath(link) == os.path.realpath(cli.plugin_root())
    os.remove(link)
    os.makedirs(link)  # a real folder is never replaced
    with pytest.raises(RuntimeError, match="not a link to this plugin"):
        cli.install_plugin(str(tmp_path))


def test_bad_input_exits_2_with_the_reason(capsys, tmp_path):
    code = cli.main(["plot-curation", "no-such-dataset", "key", "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert "no dataset named 'no-such-dataset' exists" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_demo_on_an_unreachable_ray_cluster_exits_2_before_any_work(capsys, monkeypatch):
    import transferscope.demo as demo

    monkeypatch.setattr(demo, "load_or_build_demo", lambda: pytest.fail("built the demo"))
    code = cli.main(["demo", "--executor", "ray", "--ray-address", "127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the Ray cluster at '127.0.0.1:9'" in capsys.readouterr().err


def test_demo_with_a_bad_group_size_exits_2_before_any_work(capsys, monkeypatch):
    import transferscope.demo as demo

    monkeypatch.setattr(demo, "load_or_build_demo", lambda: pytest.fail("built the demo"))
    assert cli.main(["demo", "--group-size", "0"]) == 2
    assert "group_size must be a positive integer; got 0" in capsys.readouterr().err


def test_the_cache_command_reports_and_clears_the_decoded_images(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image
    from transferscope.compute import images

    monkeypatch.setenv(images.IMAGE_CACHE_ENV, str(tmp_path / "cache"))
    path = str(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    images.decode_images([path], ["a"], 8, 1)
    assert cli.main(["cache", "info"]) == 0
    assert "1 decoded set(s)" in capsys.readouterr().out
    assert cli.main(["cache", "clear"]) == 0
    assert "freed" in capsys.readouterr().out and images.cache_info()["sets"] == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--alpha", "0.7"], r"alpha must be a finite number in \(0, 0.5\)"),
        (["--max-seeds", "2"], "max_seeds must be an integer >= 4"),
        (["--min-effect", "-0.01"], "min_effect must be a finite number"),
        (["--outcome", "loss"], "outcome must be one of"),
    ],
)
def test_a_bad_stopping_rule_on_the_command_line_exits_2_with_the_reason(
    capsys, tiny_run, flags, message
):
    import re

    _, tgt, _ = tiny_run
    code = cli.main(
        ["evaluate-curation", tgt.name, "infl", "--rule", "most_harmful", "--k", "1"] + flags
    )
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
