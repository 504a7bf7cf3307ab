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
