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
    # With them, at this budget, a start (or a standard converter the grid cannot express,
    # offered with the starts) is some layer's answer: the check below, on the run that differs
    # only by --no-standard-starts, is one that could see one.
    assert any(label.startswith(("start: ", "standard: ")) for label in chosen[False]), chosen
    assert set(chosen[True]) <= {"search", "polish", "baseline"}, chosen


def test_clip_is_recorded_carried_by_the_programs_and_repeated(weights, tmp_path):
    out, again = tmp_path / "r.json", tmp_path / "again.json"
    assert main(["optimize", str(weights), *TINY, "--clip", "0.5", "--out", str(out)]) == 0
    first = load_result(out)
    assert first.settings["options"]["clip"] == 0.5 and "clip" in first.settings["explicit"]
    # The programs of the clipped space carry its clip; the unclipped contenders offered
    # beside it (the standard converters, the baseline) none.
    for layer in first.layers:
        searched = layer.chosen in ("search", "polish") or (
            layer.chosen.startswith("start: ") and not layer.chosen.endswith("columnwise")
            and not layer.chosen.endswith(", layer"))
        assert getattr(layer.converter, "clip", 1.0) == (0.5 if searched else 1.0), layer.chosen
    assert main(["optimize", str(weights), "--config", str(out), "--quiet",
                 "--out", str(again)]) == 0
    assert load_result(again).layers == first.layers


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5", "nan", "half"])
def test_a_bad_clip_is_a_usage_error(weights, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(weights), "--clip", bad])
    assert exc.value.code == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_mappings_and_clip_range_are_recorded_said_and_repeated(weights, tmp_path, capsys):
    out, again = tmp_path / "r.json", tmp_path / "again.json"
    assert main(["optimize", str(weights), *TINY, "--mapping", "columnwise",
                 "--baseline-mapping", "layer", "--clip-range", "0.6,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # What the run compares with, before the search and in the summary.
    assert ("baseline: DualPair f=[1, 1], layer-wise mapping; strategies: per-column mapping, "
            "clip searched in [0.6, 1]") in printed
    assert "gain against DualPair f=[1, 1], layer-wise mapping" in printed
    first = load_result(out)
    options = first.settings["options"]
    assert (options["mapping"], options["baseline_mapping"], options["clip_range"]) == (
        "columnwise", "layer", [0.6, 1.0])
    assert {"mapping", "baseline_mapping", "clip_range"} <= set(first.settings["explicit"])
    for layer in first.layers:  # a kept baseline is the layer-wise baseline; a strategy either
        assert layer.mapping == ("layer" if layer.kept_baseline else layer.mapping)
        assert layer.mapping in ("layer", "columnwise")
        # The clip found lies in the range (the unclipped standard starts stay contenders).
        clip = getattr(layer.converter, "clip", 1.0)
        assert 0.6 <= clip <= 1.0
    assert main(["optimize", str(weights), "--config", str(out), "--quiet",
                 "--out", str(again)]) == 0
    second = load_result(again)
    assert second.settings == first.settings and second.layers == first.layers


@pytest.mark.parametrize("flags, fragment", [
    (["--mapping", "rows"], "invalid choice: 'rows'"),
    (["--baseline-mapping", "per-column"], "invalid choice: 'per-column'"),
    (["--clip-range", "0.9,0.5"], "0 < LOW <= HIGH <= 1"),
    (["--clip-range", "0,1"], "0 < LOW <= HIGH <= 1"),
    (["--clip-range", "0.5"], "give LOW,HIGH"),
    (["--clip-range", "a,b"], "give LOW,HIGH"),
])
def test_bad_mapping_flags_are_usage_errors(weights, flags, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(weights), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
