"""optimize's search flags: --no-standard-starts and --hierarchical, recorded and repeated by
--config."""

from __future__ import annotations

import pytest

from gpuwpo.cli import main
from gpuwpo.io import load_result
from tests._cli import TINY, write_two_layer_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_two_layer_weights(tmp_path_factory.mktemp("w"))


def test_defaults_start_the_search_and_search_layers_directly(weights, tmp_path):
    out = tmp_path / "r.json"
    assert main(["optimize", str(weights), *TINY, "--out", str(out)]) == 0
    s = load_result(out).settings
    assert s["options"]["standard_starts"] is True and s["hierarchical"] is False


def test_no_standard_starts_and_hierarchical_are_recorded_and_repeated(weights, tmp_path):
    out, again = tmp_path / "r.json", tmp_path / "again.json"
    assert main(["optimize", str(weights), *TINY, "--no-standard-starts", "--hierarchical",
                 "--out", str(out)]) == 0
    first = load_result(out)
    assert first.settings["options"]["standard_starts"] is False
    assert "standard_starts" in first.settings["explicit"]
    assert first.settings["hierarchical"] is True
    assert first.settings["options"]["maxiter"] == 2  # as asked, not the staged search's 1
    assert all(not layer.chosen.startswith("start") for layer in first.layers)
    assert main(["optimize", str(weights), "--config", str(out), "--quiet",
                 "--out", str(again)]) == 0
    second = load_result(again)
    assert second.settings == first.settings
    assert second.layers == first.layers


def test_clip_is_recorded_carried_by_the_programs_and_repeated(weights, tmp_path):
    out, again = tmp_path / "r.json", tmp_path / "again.json"
    assert main(["optimize", str(weights), *TINY, "--clip", "0.5", "--out", str(out)]) == 0
    first = load_result(out)
    assert first.settings["options"]["clip"] == 0.5 and "clip" in first.settings["explicit"]
    assert all(layer.converter.clip == 0.5 for layer in first.layers
               if layer.chosen != "baseline")
    assert main(["optimize", str(weights), "--config", str(out), "--quiet",
                 "--out", str(again)]) == 0
    assert load_result(again).layers == first.layers


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5", "nan", "half"])
def test_a_bad_clip_is_a_usage_error(weights, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(weights), "--clip", bad])
    assert exc.value.code == 2
    assert "(0, 1]" in capsys.readouterr().err
