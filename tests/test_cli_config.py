"""The command line's physics flags, --config (TOML or a results file) and the registry records
of every saved class, round-tripped through results files and the command line."""

from __future__ import annotations

import json

import pytest

import gpuwpo
from gpuwpo.cli import main, make_compensation, parse_baseline, parse_g_range
from gpuwpo.cli.config import read_config
from gpuwpo.device.simulate import DEFAULT_TIMES
from gpuwpo.io import load_result
from gpuwpo.network.settings import (
    config_from_settings,
    merge_physics,
    merge_settings,
    optimize_kwargs_from_settings,
    physics_from_settings,
)
from gpuwpo.registry import from_dict, registered, to_dict
from gpuwpo.search.options import SearchOptions
from tests._cli import TINY, write_two_layer_weights

TABLE = {"g_lst": [0.0, 5.0, 12.0, 30.0], "nu_mean_lst": [0.1, 0.07, 0.05, 0.04],
         "nu_std_lst": [0.03, 0.02, 0.02, 0.01]}

EVERY_CLASS = [
    gpuwpo.PCMLikeNoiseModel(g_max=30.0, prog_coeff=[0.3, 1.5, -1.0], drift_scale=0.7),
    gpuwpo.CustomDriftPCMLikeNoiseModel(TABLE, g_max=30.0),
    gpuwpo.SinglePairConductanceConverter(1.0, 20.0),
    gpuwpo.DualPairConductanceConverter([1.0, 3.0], 0.0, 25.0),
    gpuwpo.NPairConductanceConverter([1.0, 2.0, 4.0], 0.5, 25.0),
    gpuwpo.StrategySpace([None, None]).to_converter(
        gpuwpo.StrategySpace([None, None]).encode_npair([1.0, 2.0]), 0.7),
    gpuwpo.FusionConductanceConverter(30.0),
    gpuwpo.GlobalDriftCompensation(),
    gpuwpo.GlobalDriftCompensation.aihwkit_default(exact_reference=True),
    gpuwpo.PerColumnDriftCompensation.aihwkit_default(),
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_two_layer_weights(tmp_path_factory.mktemp("w"))


# ------------------------------------------------------------------------------------------
# the registry


def test_every_saved_class_is_registered_and_round_trips_through_json():
    names = {type(obj).__name__ for obj in EVERY_CLASS}
    assert names == {k for k in registered() if "." not in k}  # gpuwpo's own
    for obj in EVERY_CLASS:
        record = json.loads(json.dumps(to_dict(obj)))
        again = from_dict(record)
        assert type(again) is type(obj) and to_dict(again) == record


def test_registry_refuses_unknown_and_malformed_records():
    with pytest.raises(ValueError, match="unknown class 'os.system'"):
        from_dict({"class": "os.system"})
    with pytest.raises(ValueError, match="no 'class'"):
        from_dict({"g_max": 3})
    with pytest.raises(ValueError, match="does not take"):
        from_dict({"class": "FusionConductanceConverter", "g_min": 1.0})
    with pytest.raises(ValueError, match=r"Fusion g_max must be within \[10, 40\]"):
        from_dict({"class": "FusionConductanceConverter", "g_max": 400.0})


# ------------------------------------------------------------------------------------------
# physics flags


def test_parse_baseline_g_range_and_compensation():
    assert parse_g_range("0,25") == (0.0, 25.0)
    for bad in ("25,0", "a,b", "1", "-1,3"):
        with pytest.raises(Exception, match="conductance range"):
            parse_g_range(bad)
    assert isinstance(parse_baseline("single", (2.0, 20.0)),
                      gpuwpo.SinglePairConductanceConverter)
    dual = parse_baseline("dualpair:1,4", (0.0, 30.0))
    assert dual.f_lst.tolist() == [1.0, 4.0] and dual.g_max == 30.0
    assert parse_baseline("dualpair").f_lst.tolist() == [1.0, 1.0]
    assert parse_baseline("npair:1,2,4").num_pairs == 3
    assert parse_baseline("fusion", (0.0, 30.0)).g_max == 30.0
    for bad in ("triplepair", "single:3", "npair", "dualpair:x,y"):
        with pytest.raises(ValueError, match="baseline"):
            parse_baseline(bad)
    comp = make_compensation("per-column", "aihwkit")
    assert isinstance(comp, gpuwpo.PerColumnDriftCompensation) and comp.bound_management
    assert make_compensation("exact-reference").exact_reference


@pytest.mark.parametrize("spec, cls", [
    ("single", "SinglePairConductanceConverter"),
    ("npair:1,2,4", "NPairConductanceConverter"),
    ("fusion", "FusionConductanceConverter"),
])
def test_every_baseline_kind_through_the_command_line(weights, tmp_path, capsys, spec, cls):
    out = tmp_path / "r.json"
    f_lst = "None,None,None" if spec.startswith("npair") else "None,None"
    assert main(["optimize", str(weights), *TINY, "--baseline", spec, "--g-range", "0,30",
                 "--f-lst", f_lst, "--out", str(out)]) == 0
    recorded = physics_from_settings(load_result(out).settings)
    assert type(recorded["baseline"]).__name__ == cls and recorded["baseline"].g_max == 30.0
    assert recorded["noise_model"].g_max == 30.0
    capsys.readouterr()
    # evaluate and plot read it back (a Fusion baseline used to fail here)
    assert main(["evaluate", str(out), str(weights), "--repeats", "2", "--quiet",
                 "--device", "cpu"]) == 0
    assert "overall" in capsys.readouterr().out
    assert main(["plot", str(out), "--out", str(tmp_path / "p"), "--weights", str(weights),
                 "--repeats", "1", "--readout", "aihwkit", "--physics", "aihwkit",
                 "--device", "cpu"]) == 0


def test_evaluate_flags_override_what_the_file_records(weights, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["optimize", str(weights), *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(weights), "--repeats", "2", "--quiet", "--seed", "1"]) \
        == 0
    default = capsys.readouterr().out
    assert main(["evaluate", str(out), str(weights), "--repeats", "2", "--quiet", "--seed", "1",
                 "--baseline", "dualpair:1,3"]) == 0
    other = capsys.readouterr().out
    assert default != other  # another baseline, other figures
    assert main(["evaluate", str(out), str(weights), "--repeats", "2", "--quiet",
                 "--readout", "aihwkit", "--compensation", "per-column"]) == 0


# ------------------------------------------------------------------------------------------
# --config


def test_a_results_file_as_config_repeats_the_run_exactly(weights, tmp_path, capsys):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    argv = ["optimize", str(weights), *TINY, "--physics", "aihwkit", "--baseline", "dualpair:1,2",
            "--g-range", "0,20", "--readout", "aihwkit", "--compensation", "exact-reference",
            "--seed", "5", "--f-lst", "1,None", "--include", "fc1", "--out", str(first)]
    assert main(argv) == 0
    assert main(["optimize", str(weights), "--config", str(first), "--quiet", "--device", "cpu",
                 "--out", str(second)]) == 0
    a, b = load_result(first), load_result(second)
    assert a.settings == b.settings
    assert a.layers == b.layers  # converters bit for bit, figures, histories
    assert a.total_tnmse == b.total_tnmse and a.nfev == b.nfev
    assert a.settings["physics"] == "aihwkit" and a.settings["f_lst"] == [1.0, None]
    assert [layer.name for layer in a.layers] == ["fc1.weight"]
    # A flag given wins over the file.
    third = tmp_path / "third.json"
    assert main(["optimize", str(weights), "--config", str(first), "--quiet", "--device", "cpu",
                 "--seed", "6", "--out", str(third)]) == 0
    assert load_result(third).settings["options"]["seed"] == 6


def test_a_toml_config_with_record_tables(weights, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("""
popsize = 2
maxiter = 2
baseline_iterations = 2
validation_repeats = 2
test_size = [16, 4]
times = "1s,1d"
f_lst = "None,None"
physics = "aihwkit"
mutation = [0.5, 1.0]
recombination = 0.7

[noise_model]
class = "CustomDriftPCMLikeNoiseModel"
g_max = 30.0

[noise_model.custom_drift_model]
g_lst = [0.0, 5.0, 12.0, 30.0]
nu_mean_lst = [0.1, 0.07, 0.05, 0.04]
nu_std_lst = [0.03, 0.02, 0.02, 0.01]

[baseline]
class = "FusionConductanceConverter"
g_max = 30.0

[compensation]
class = "PerColumnDriftCompensation"
readout_noise = 0.06
""")
    out = tmp_path / "r.json"
    assert main(["optimize", str(weights), "--config", str(config), "--quiet", "--device", "cpu",
                 "--out", str(out)]) == 0
    s = load_result(out).settings
    assert s["noise_model"]["class"] == "CustomDriftPCMLikeNoiseModel"
    assert s["baseline"]["class"] == "FusionConductanceConverter"
    assert s["compensation"]["class"] == "PerColumnDriftCompensation"
    assert s["options"]["mutation"] == [0.5, 1.0] and s["physics"] == "aihwkit"
    assert s["t_steps"] == [1.0, 86400.0]


@pytest.mark.parametrize("text, fragment", [
    ("popsise = 3\n", "unknown setting(s) popsise"),
    ("popsize = 0\n", "popsize"),
    ("[noise_model]\nclass = 'Bogus'\n", "unknown class 'Bogus'"),
    ("times = 'soon'\n", "setting times"),
    ("hierarchical = 'yes'\n", "setting hierarchical must be true or false"),
    ("this is not toml", "not a TOML config"),
])
def test_bad_configs_are_one_line_errors(weights, tmp_path, capsys, text, fragment):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert main(["optimize", str(weights), "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and err[0].startswith("gpuwpo: error:"), err


# ------------------------------------------------------------------------------------------
# the merge of a config with the flags (gpuwpo.network.settings): the command line only parses


def test_merge_settings_flags_over_config_over_defaults():
    run = merge_settings({})
    assert run["options"] == SearchOptions() and not run["options"].explicit
    assert (run["t_steps"], run["f_lst"], run["backend"], run["physics"]) == (
        list(DEFAULT_TIMES), [None, None], "torch", "device")
    assert run["per_layer"] is True and run["hierarchical"] is None and run["device"] is None
    config = {"popsize": 3, "maxiter": 9, "times": [1.0, 60.0], "symmetric": False,
              "test_size": [16, 4], "global_strategy": True, "hierarchical": True}
    run = merge_settings({"popsize": 4, "seed": 7, "device": "cpu"}, config)
    o = run["options"]
    assert (o.popsize, o.maxiter, o.seed, o.test_in_features, o.test_out_features) == (
        4, 9, 7, 16, 4)
    assert o.explicit == {"popsize", "maxiter", "seed", "test_in_features", "test_out_features"}
    assert run["t_steps"] == [1.0, 60.0] and run["symmetric"] is False
    assert run["per_layer"] is False and run["hierarchical"] is True and run["device"] == "cpu"
    # The keyword arguments of optimize_network, as a results file's are.
    assert set(run) - {"device"} == set(optimize_kwargs_from_settings(
        {"options": {}, "f_lst": [None, None]}))


def test_given_physics_modify_the_configs_objects():
    recorded = {"baseline": gpuwpo.DualPairConductanceConverter([1.0, 3.0], 0.0, 20.0),
                "compensation": gpuwpo.PerColumnDriftCompensation.aihwkit_default()}
    # A baseline spec takes the recorded range; a range alone moves the recorded kind.
    single = merge_physics({"baseline": "single"}, recorded)["baseline"]
    assert isinstance(single, gpuwpo.SinglePairConductanceConverter) and single.g_max == 20.0
    moved = merge_physics({"g_range": (0.0, 30.0)}, recorded)
    assert moved["baseline"].f_lst.tolist() == [1.0, 3.0] and moved["baseline"].g_max == 30.0
    assert moved["noise_model"].g_max == 30.0
    # A readout alone keeps the recorded kind of compensation, and the other way round.
    ideal = merge_physics({"readout": "ideal"}, recorded)["compensation"]
    assert isinstance(ideal, gpuwpo.PerColumnDriftCompensation) and ideal.is_ideal
    exact = merge_physics({"compensation": "exact-reference"}, recorded)["compensation"]
    assert isinstance(exact, gpuwpo.GlobalDriftCompensation) and exact.exact_reference
    assert not exact.is_ideal
    # The same through merge_settings, whether the objects come from a TOML file or a results
    # file.
    run = merge_settings({"baseline": "single"}, recorded)
    assert run["g_converter_baseline"].g_max == 20.0
    for bad, fragment in (({"physics": "chip"}, "unknown physics 'chip'"),
                          ({"readout": "noisy"}, "unknown readout 'noisy'"),
                          ({"seed": 1}, r"unknown physics setting\(s\) seed")):
        with pytest.raises(ValueError, match=fragment):
            merge_physics(bad)


def test_a_resumed_run_keeps_saving_where_it_was_saved():
    assert merge_settings({"resume": "a.ckpt"})["options"].checkpoint == "a.ckpt"
    options = merge_settings({"resume": "a.ckpt", "checkpoint": "b.ckpt"})["options"]
    assert (options.resume, options.checkpoint) == ("a.ckpt", "b.ckpt")
    assert merge_settings({})["options"].checkpoint is None


@pytest.mark.parametrize("given, config, fragment", [
    ({"popsise": 3}, None, "unknown setting(s) popsise"),
    ({}, {"colour": "red"}, "the config hold(s) unknown setting(s) colour"),
    ({"backend": "nonsense"}, None, "unknown backend 'nonsense'"),
    ({"noise_model": "pcm"}, None, "noise_model must be a noise model"),
    ({"popsize": 0}, None, "popsize"),
])
def test_merge_settings_refuses_what_it_cannot_run(given, config, fragment):
    with pytest.raises(ValueError) as err:
        merge_settings(given, config)
    assert fragment in str(err.value)


def test_a_results_config_merged_with_nothing_is_the_recorded_run(weights, tmp_path):
    out = tmp_path / "r.json"
    assert main(["optimize", str(weights), *TINY, "--physics", "aihwkit", "--baseline",
                 "dualpair:1,2", "--g-range", "0,20", "--seed", "5", "--global",
                 "--out", str(out)]) == 0
    settings = load_result(out).settings
    recorded = optimize_kwargs_from_settings(settings)
    run = merge_settings({}, config_from_settings(settings))
    assert run.pop("device") is None
    assert set(run) == set(recorded)
    for key in ("noise_model", "g_converter_baseline", "compensation"):
        assert to_dict(run[key]) == to_dict(recorded[key])
    for key in set(run) - {"noise_model", "g_converter_baseline", "compensation"}:
        assert run[key] == recorded[key], key
    assert run["options"].explicit == recorded["options"].explicit


def test_a_toml_config_reads_every_run_setting(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('hierarchical = true\nglobal = false\nsymmetric = false\n'
                      'include = ["fc1"]\ntimes = [1, 3600]\ng_range = "0,30"\n'
                      'baseline = "npair:1,2,4"\ncompensation = "per-column"\n'
                      'readout = "aihwkit"\ntest_size = [16, 4]\n')
    run = merge_settings({}, read_config(config))
    assert run["hierarchical"] is True and run["per_layer"] is True
    assert run["symmetric"] is False and run["include"] == ["fc1"]
    assert run["t_steps"] == [1.0, 3600.0] and run["options"].test_in_features == 16
    assert run["g_converter_baseline"].num_pairs == 3 and run["g_converter_baseline"].g_max == 30
    assert isinstance(run["compensation"], gpuwpo.PerColumnDriftCompensation)
    assert not run["compensation"].is_ideal


@pytest.mark.parametrize("clip_range", ["[0.5, 0.9]", '"0.5,0.9"'])
def test_a_toml_config_reads_the_mappings_and_the_clip_range(tmp_path, clip_range):
    config = tmp_path / "run.toml"
    config.write_text(f'mapping = "layer"\nbaseline_mapping = "columnwise"\n'
                      f'clip_range = {clip_range}\n')
    options = merge_settings({}, read_config(config))["options"]
    assert (options.mapping, options.baseline_mapping, options.clip_range) == (
        "layer", "columnwise", (0.5, 0.9))
    assert {"mapping", "baseline_mapping", "clip_range"} <= options.explicit
    # A flag given overrides the config.
    options = merge_settings({"mapping": "columnwise"}, read_config(config))["options"]
    assert options.mapping == "columnwise" and options.baseline_mapping == "columnwise"


@pytest.mark.parametrize("text, fragment", [
    ('mapping = "rows"', "mapping"),
    ("baseline_mapping = 1", "baseline_mapping"),
    ("clip_range = [0.9, 0.5]", "clip_range"),
    ("clip_range = [0.5, 0.7, 0.9]", "clip_range"),
    ("clip_range = 0.5", "clip_range"),
])
def test_bad_mapping_settings_in_a_toml_config_are_named(tmp_path, text, fragment):
    config = tmp_path / "run.toml"
    config.write_text(text + "\n")
    with pytest.raises(ValueError, match=fragment) as err:
        read_config(config)
    assert "run.toml" in str(err.value) and "\n" not in str(err.value)
