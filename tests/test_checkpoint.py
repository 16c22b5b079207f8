"""Checkpoints: one atomic file, a fingerprint of the run, and exact resumption.

An interrupted run resumed from its checkpoint ends exactly as the uninterrupted run (the whole
NetworkResult but its wall time); another run's checkpoint is refused naming the field that
differs; a torn, corrupted or foreign file is refused naming its path; the searches that cannot
checkpoint (scipy's; EvoTorch's CMA-ES, SNES, GA) say so, and the EvoTorch DE resumes exactly.
The command line is tested end to end, killed by SIGINT and by SIGKILL. Budgets are tiny
(population 2 x D, a few generations, a 16 x 4 test tile, no polish).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gpuwpo
from gpuwpo.cli import main
from gpuwpo.io import load_result
from gpuwpo.search.backends.torch_backend import load_checkpoint
from gpuwpo.search.checkpoint import (
    Checkpoint,
    check_target,
    digest,
    read_checkpoint,
    write_checkpoint,
)

T_STEPS = [1.0, 86400.0]
TINY = dict(popsize=2, maxiter=4, test_in_features=16, test_out_features=4,
            baseline_iterations=2, validation_repeats=2, polish=False, disp=False, device="cpu")


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(8, 16, generator=gen) * 0.3,
            "b.weight": torch.randn(4, 8, generator=gen) * 0.3}


def _run(weights=None, *, t_steps=T_STEPS, noise_model=None, **kwargs):
    return gpuwpo.optimize_network(
        _weights() if weights is None else weights,
        gpuwpo.PCMLikeNoiseModel() if noise_model is None else noise_model, t_steps,
        gpuwpo.DualPairConductanceConverter(), [None, None], **{**TINY, **kwargs})


def _interrupt_at(n: int):
    """A callback that interrupts the run (as Ctrl-C does) at its n-th generation."""
    calls = [0]

    def callback(info):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt

    return callback


def _same(a, b) -> bool:
    return dataclasses.replace(a, wall_time=0.0) == dataclasses.replace(b, wall_time=0.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of a per-layer run interrupted at generation 2 (saved by the interrupt:
    checkpoint_every is larger than the run)."""
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(checkpoint=path, checkpoint_every=100, callback=_interrupt_at(2))
    return path


# --------------------------------------------------------------------------------------------
# Exact resumption


def test_an_interrupted_run_is_saved_and_resumes_to_the_uninterrupted_result(saved, tmp_path):
    state, checkpoint = load_checkpoint(saved)
    assert state.nit == 2 and list(checkpoint.stages) == ["layers"]
    assert sorted(os.listdir(saved.parent)) == ["run.ckpt"]  # no temporary file left
    resumed = _run(resume=saved)
    assert resumed.nit == 4
    assert _same(resumed, _run())


@pytest.mark.slow
@pytest.mark.parametrize("mode, interrupt, stages", [
    ("global", 2, ["global"]),
    ("hierarchical", 2, ["global"]),            # in the pooled search
    ("hierarchical", 6, ["global", "layers"]),  # in the per-layer search, after the pooled one
])
def test_every_search_of_a_network_run_resumes_exactly(tmp_path, mode, interrupt, stages):
    kwargs = dict(per_layer=mode != "global", hierarchical=mode == "hierarchical")
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(checkpoint=path, checkpoint_every=1, callback=_interrupt_at(interrupt), **kwargs)
    assert list(read_checkpoint(path).stages) == stages
    resumed = _run(resume=path, checkpoint=path, **kwargs)
    assert _same(resumed, _run(**kwargs))
    assert list(read_checkpoint(path).stages) == (["global", "layers"]
                                                  if mode == "hierarchical" else ["global"])


def test_maxiter_may_grow_on_resume_but_not_fall_below_the_checkpoint(saved):
    assert _same(_run(resume=saved, maxiter=5), _run(maxiter=5))
    with pytest.raises(ValueError, match=r"generation 2, past maxiter=1"):
        _run(resume=saved, maxiter=1)


# --------------------------------------------------------------------------------------------
# Another run's checkpoint: refused, naming the field


@pytest.mark.parametrize("change, field", [
    (dict(seed=7), "seed differs"),
    (dict(weights=_weights(1)), "weights differ"),
    (dict(weights={"a.weight": _weights()["a.weight"]}), "weights differ"),
    (dict(t_steps=[1.0, 3600.0]), "physics.t_steps differs"),
    (dict(noise_model=gpuwpo.PCMLikeNoiseModel(g_max=30.0)), "physics.noise_model.g_max"),
    (dict(physics="aihwkit"), "physics.physics differs"),
    (dict(popsize=3), "settings.options.popsize differs"),
    (dict(test_in_features=32), "settings.options.test_in_features differs"),
    (dict(hierarchical=True), "settings.hierarchical differs"),
])
def test_resume_refuses_another_run_naming_the_field(saved, change, field):
    with pytest.raises(ValueError, match=rf"{saved}.* of another run: {field}"):
        _run(resume=saved, **change)


def test_resume_refuses_other_warm_starts_of_the_same_run(tmp_path):
    w = gpuwpo.student_t_weights((8, 16), generator=torch.Generator().manual_seed(0))
    kwargs = dict(noise_model=gpuwpo.PCMLikeNoiseModel(), t_steps=T_STEPS,
                  g_converter_baseline=gpuwpo.DualPairConductanceConverter(),
                  f_lst=[None, None], **TINY)
    path = tmp_path / "run.ckpt"
    gpuwpo.WeightProgrammingOptimizer(w, checkpoint=path, **kwargs).run_optimizer(
        {"mine": torch.full((21,), 0.5)})
    opt = gpuwpo.WeightProgrammingOptimizer(w, resume=path, **kwargs)
    with pytest.raises(ValueError, match="stage search.warm_starts differs"):
        opt.run_optimizer({"mine": torch.full((21,), 0.25)})


# --------------------------------------------------------------------------------------------
# The fingerprint: a network run's from its settings record, the search layer's from what the
# optimizer knows; the same physics part either way


def _record(**changes):
    from gpuwpo.network.settings import run_record
    from gpuwpo.search.options import SearchOptions

    options = SearchOptions(popsize=2, maxiter=4, seed=3).replace(
        **changes.pop("options", {}))
    kwargs = dict(f_lst=[None, None], t_steps=T_STEPS, backend="torch", per_layer=True,
                  include=None, exclude=None, options=options,
                  noise_model=gpuwpo.PCMLikeNoiseModel(),
                  baseline=gpuwpo.DualPairConductanceConverter(),
                  compensation=gpuwpo.GlobalDriftCompensation(),
                  space=gpuwpo.StrategySpace([None, None]), device="cpu", physics="device")
    return run_record(**{**kwargs, **changes})


def test_a_network_fingerprint_is_its_record_split_without_what_may_change():
    from gpuwpo.network.settings import fingerprint_from_settings
    from gpuwpo.search.checkpoint import CHANGEABLE_OPTIONS, PHYSICS_FIELDS

    record = _record()
    fp = fingerprint_from_settings(record, "d1")
    assert set(fp) == {"gpuwpo_version", "weights", "physics", "settings", "seed"}
    assert (fp["weights"], fp["seed"], fp["gpuwpo_version"]) == ("d1", 3, gpuwpo.__version__)
    assert fp["physics"] == {k: record[k] for k in PHYSICS_FIELDS}
    rest = set(record) - set(PHYSICS_FIELDS) - {"explicit"}
    assert set(fp["settings"]) == rest
    assert not set(fp["settings"]["options"]) & {"seed", *CHANGEABLE_OPTIONS}
    # What may change on resume, and which options were given, leave it as it is ...
    for same in (dict(options=dict(checkpoint="x.ckpt", checkpoint_every=1, disp=False)),
                 dict(options=dict(maxiter=9)), dict(options=dict(popsize=2))):
        assert fingerprint_from_settings(_record(**same), "d1") == fp, same
    # ... what decides what the run finds does not (maxiter in a hierarchical run).
    hier = fingerprint_from_settings(_record(hierarchical=True), "d1")
    assert hier != fp and hier["settings"]["options"]["maxiter"] == 4
    assert fingerprint_from_settings(_record(hierarchical=True, options=dict(maxiter=9)),
                                     "d1") != hier
    for other in (dict(options=dict(popsize=3)), dict(t_steps=[1.0]), dict(backend="evotorch"),
                  dict(options=dict(seed=4)), dict(physics="aihwkit")):
        assert fingerprint_from_settings(_record(**other), "d1") != fp, other


def test_the_optimizer_fingerprints_the_same_physics_without_the_network(tmp_path):
    from gpuwpo.network.settings import fingerprint_from_settings

    w = _weights()["a.weight"]
    opt = gpuwpo.WeightProgrammingOptimizer(
        w, [None, None], gpuwpo.PCMLikeNoiseModel(), T_STEPS,
        gpuwpo.DualPairConductanceConverter(), checkpoint=tmp_path / "run.ckpt",
        popsize=2, maxiter=4, seed=3, device="cpu")
    fp = opt.checkpoint_fingerprint()
    network = fingerprint_from_settings(_record(options=dict(checkpoint=str(tmp_path))), "x")
    assert fp["physics"] == network["physics"] and fp["seed"] == network["seed"] == 3
    assert fp["settings"]["options"] == network["settings"]["options"]
    assert fp["weights"] == digest({"0": w})


def _small_checkpoint(path) -> bytes:
    gen = torch.Generator().manual_seed(0)
    stages = {"layers": ({"population": torch.rand(2, 5, 3, generator=gen),
                          "converged": torch.tensor([True, False]),
                          "empty": torch.zeros(2, 0)}, {"nit": 3, "kind": "test"})}
    write_checkpoint(path, Checkpoint({"seed": 1, "physics": {"t_steps": [1.0]}}, stages))
    return path.read_bytes()


def test_file_round_trip(tmp_path):
    path = tmp_path / "c.ckpt"
    _small_checkpoint(path)
    again = read_checkpoint(path)
    assert again.fingerprint == {"seed": 1, "physics": {"t_steps": [1.0]}}
    tensors, meta = again.stages["layers"]
    assert meta == {"nit": 3, "kind": "test"} and tensors["converged"].tolist() == [True, False]
    assert tensors["empty"].shape == (2, 0)
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt"]


def test_a_torn_or_corrupted_checkpoint_is_refused_naming_its_path(tmp_path):
    good = tmp_path / "good.ckpt"
    raw = _small_checkpoint(good)
    bad = tmp_path / "bad.ckpt"
    cuts = [0, 1, 7, 8, 9, 100, len(raw) // 2, len(raw) - 1]
    gen = torch.Generator().manual_seed(0)
    flips = sorted({0, 1, 7, 8, 9, len(raw) - 1,
                    *torch.randint(0, len(raw), (150,), generator=gen).tolist()})
    variants = [raw[:n] for n in cuts] + [raw + b"\0"]
    variants += [raw[:i] + bytes([raw[i] ^ 0x20]) + raw[i + 1:] for i in flips]
    for data in variants:
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=str(bad)):
            read_checkpoint(bad)
    # Not a checkpoint at all: a JSON file, a safetensors file of weights, a directory (the
    # two-file checkpoint of format version 1).
    bad.write_text('{"layers": []}')
    with pytest.raises(ValueError, match=f"{bad} is not a gpuwpo checkpoint"):
        read_checkpoint(bad)
    from safetensors.torch import save_file

    save_file(_weights(), str(bad))
    with pytest.raises(ValueError, match=f"{bad} is not a gpuwpo checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(ValueError, match=f"{tmp_path} is a directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "nowhere")


def test_a_corrupted_checkpoint_is_refused_before_any_work(saved, tmp_path):
    bad = tmp_path / "torn.ckpt"
    bad.write_bytes(saved.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"checkpoint {bad} is torn or corrupted"):
        _run(resume=bad)


def test_a_checkpoint_never_overwrites_another_file(tmp_path):
    weights = tmp_path / "net.safetensors"
    from safetensors.torch import save_file

    save_file(_weights(), str(weights))
    before = weights.read_bytes()
    with pytest.raises(ValueError, match="not a gpuwpo checkpoint; refusing to overwrite"):
        _run(checkpoint=weights)
    assert weights.read_bytes() == before
    with pytest.raises(ValueError, match="is a directory"):
        check_target(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_target(tmp_path / "no" / "run.ckpt")
    with pytest.raises(ValueError, match="checkpoint must be a file path, got 3"):
        _run(checkpoint=3)


def test_digest_sees_names_dtypes_shapes_and_values():
    w = torch.arange(6.0).reshape(2, 3)
    base = digest({"w": w})
    assert digest({"w": w.clone()}) == base
    for other in ({"v": w}, {"w": w.double()}, {"w": w.reshape(3, 2)},
                  {"w": w + torch.tensor(1e-7)}, {"w": w, "x": w}):
        assert digest(other) != base


# --------------------------------------------------------------------------------------------
# Backends


@pytest.mark.parametrize("backend, algorithm", [("scipy", "de"), ("evotorch", "cmaes"),
                                                ("evotorch", "snes"), ("evotorch", "ga")])
@pytest.mark.parametrize("option", ["checkpoint", "resume"])
def test_searches_without_checkpoints_refuse_them_by_name(tmp_path, backend, algorithm, option):
    kwargs = {option: tmp_path / "run.ckpt"}
    if algorithm != "de":
        kwargs["algorithm"] = algorithm
    with pytest.raises(ValueError, match=f"the {backend} backend cannot honour {option}="):
        _run(backend=backend, **kwargs)
    assert not (tmp_path / "run.ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("hierarchical, interrupt", [(False, 2), (True, 6)])
def test_the_evotorch_de_resumes_exactly(tmp_path, hierarchical, interrupt):
    pytest.importorskip("evotorch")
    kwargs = dict(backend="evotorch", hierarchical=hierarchical)
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _run(checkpoint=path, checkpoint_every=100, callback=_interrupt_at(interrupt), **kwargs)
    assert read_checkpoint(path).stages["layers" if not hierarchical else "global"]
    assert _same(_run(resume=path, **kwargs), _run(**kwargs))
    with pytest.raises(ValueError, match="settings.backend differs"):
        _run(resume=path, hierarchical=hierarchical)


# --------------------------------------------------------------------------------------------
# The command line

CLI_TINY = ["--popsize", "2", "--maxiter", "6", "--test-size", "16", "4",
            "--baseline-iterations", "2", "--validation-repeats", "2", "--times", "1,1d",
            "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.save(_weights(), d / "net.pt")
    (d / "tiny.toml").write_text("polish = false\n")
    return d


def _cli(d, *extra) -> list[str]:
    return ["optimize", str(d / "net.pt"), *CLI_TINY, "--config", str(d / "tiny.toml"),
            *map(str, extra)]


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpuwpo: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err


def test_cli_refuses_a_torn_checkpoint_another_run_and_a_foreign_file(cli_files, tmp_path,
                                                                        capsys):
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"\x10\0\0\0\0\0\0\0{\"__metadata__\"")
    assert main(_cli(cli_files, "--resume", ckpt)) == 2
    _one_line_error(capsys, str(ckpt), "torn or corrupted")
    weights = cli_files / "net.pt"
    before = weights.read_bytes()
    assert main(_cli(cli_files, "--checkpoint", weights)) == 2
    _one_line_error(capsys, str(weights), "refusing to overwrite")
    assert weights.read_bytes() == before
    assert main(_cli(cli_files, "--checkpoint", ckpt.with_suffix(".json"), "--out",
                     ckpt.with_suffix(".json"))) == 2
    _one_line_error(capsys, "--out and --checkpoint")
    assert main(_cli(cli_files, "--backend", "scipy", "--checkpoint", tmp_path / "new")) == 2
    _one_line_error(capsys, "scipy backend cannot honour checkpoint")


@pytest.fixture(scope="module")
def uninterrupted(cli_files):
    out = cli_files / "uninterrupted.json"
    assert main(_cli(cli_files, "--out", out)) == 0
    return load_result(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_cli_killed_then_resumed_ends_as_the_uninterrupted_run(cli_files, uninterrupted,
                                                               tmp_path, sig, status, capsys):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "results.json"
    proc = subprocess.Popen([sys.executable, "-m", "gpuwpo",
                             *_cli(cli_files, "--checkpoint", ckpt, "--checkpoint-every", 1,
                                   "--out", out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err  # killed mid-search, not finished
    assert not out.exists()
    if sig == signal.SIGINT:
        assert err.strip() == "gpuwpo: interrupted"
    nit = load_checkpoint(ckpt)[0].nit
    assert 1 <= nit < 6
    assert main(_cli(cli_files, "--resume", ckpt, "--out", out)) == 0
    # No temporary file is left (one a kill mid-write left is replaced by the next write).
    assert sorted(os.listdir(tmp_path)) == ["results.json", "run.ckpt"]
    resumed = load_result(out)
    assert resumed.nit == 6
    assert _same(resumed, uninterrupted)
