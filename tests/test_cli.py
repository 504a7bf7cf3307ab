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
