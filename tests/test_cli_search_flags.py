"""optimize's search flags: --no-standard-starts and --hierarchical, recorded and repeated by
--config; a standard start can be a layer's answer, and none is without them."""

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
    assert main(["optimize", str(weights), "--config", str(out), "--quiet",
                 "--out", str(again)]) == 0
    second = load_result(again)
    assert second.settings == first.settings
    assert second.layers == first.layers


@pytest.mark.slow
def test_a_standard_start_can_be_the_answer_and_none_is_without_them(weights, tmp_path):
    # Enough validation repeats that the choice can tell a strategy from the baseline; the
    # same budget and seed with and without the standard starts.
    chosen = {}
    for flags in ([], ["--no-standard-starts"]):
        out = tmp_path / "r.json"
        assert main(["optimize", str(weights), *TINY, "--validation-repeats", "16", *flags,
                     "--out", str(out)]) == 0
        chosen[bool(flags)] = [layer.chosen for layer in load_result(out).layers]
    # With them, at this budget, a start is some layer's answer: the check below, on the run
    # that differs only by --no-standard-starts, is one that could see a start.
    assert any(label.startswith("start: ") for label in chosen[False]), chosen
    assert set(chosen[True]) <= {"search", "polish", "baseline"}, chosen


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
