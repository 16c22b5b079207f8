"""Layer-sharded search (gpuwpo.network.distributed): a network's layers run in parts equal, bit
for bit,
the single-process run; on a local Ray cluster too, with a worker killed mid-run."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import pytest
import torch

import gpuwpo
from gpuwpo.network import InProcess, RayCluster

T_STEPS = [1.0, 3600.0, 86400.0]
# Small tiles and budgets, chosen so that the layers converge at different generations (19, 19,
# 21, 25 of 25: a part whose layers have all converged stops before the whole does) and the
# validated choice goes both ways (polish and baseline win).
OPTIONS = dict(popsize=2, maxiter=25, atol=0.3, test_in_features=64, test_out_features=8,
               validation_repeats=8, baseline_iterations=8, polish_maxiter=2, disp=False,
               seed=5, standard_starts=False, checkpoint_every=3)


def _network(layers: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"l{i}.weight": gpuwpo.student_t_weights((24 + 8 * i, 16), generator=gen)
            for i in range(layers)}


def _run(weights, **kwargs) -> gpuwpo.NetworkResult:
    return gpuwpo.optimize_network(
        weights, gpuwpo.PCMLikeNoiseModel(g_max=25.0), T_STEPS,
        gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), [None, None],
        **{**OPTIONS, **kwargs})


def _assert_same(whole: gpuwpo.NetworkResult, part: gpuwpo.NetworkResult) -> None:
    """Every field equal (LayerResult compares converters bit for bit), wall_time aside."""
    for f in dataclasses.fields(whole):
        if f.name != "wall_time":
            assert getattr(part, f.name) == getattr(whole, f.name), f.name


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("hierarchical", "starts", "tasks"), [
    (False, True, [[0, 2], [1, 3]]),  # with the standard starts' ranking, keyed per layer
    pytest.param(False, False, [[3], [2, 0], [1]], marks=pytest.mark.slow),
    pytest.param(True, False, [[0, 2], [1, 3]], marks=pytest.mark.slow),
])
def test_a_network_run_in_parts_equals_the_whole_run_bit_for_bit(hierarchical, starts, tasks):
    weights = _network()
    whole = _run(weights, hierarchical=hierarchical, standard_starts=starts)
    part = _run(weights, hierarchical=hierarchical, standard_starts=starts,
                distributed=InProcess(tasks))
    _assert_same(whole, part)


def test_a_clipped_network_run_in_parts_equals_the_whole_run_bit_for_bit():
    # The parts' tiles are moved to where their tasks search, their grid positions computed
    # again there: on the grid over clip x max|W| (with max|W| alone, every part differs).
    weights = _network(3)
    whole = _run(weights, clip=0.5, maxiter=6)
    _assert_same(whole, _run(weights, clip=0.5, maxiter=6, distributed=InProcess([[2], [0, 1]])))


def test_tiles_moved_to_a_device_keep_their_grid_positions_on_the_clipped_grid():
    from gpuwpo.device.converters import grid_interpolation
    from gpuwpo.network.executors import tiles_on
    from gpuwpo.search.tiles import TestTile

    tiles = TestTile.from_layers(list(_network(3).values()), 11, shape=(8, 64), seed=1, clip=0.5)
    moved = tiles_on(tiles.select([2, 0]), torch.device("cpu"))
    picked = tiles.select([2, 0])
    assert moved.clip == 0.5 and moved.layer_ids == (2, 0)
    for name in ("weights", "max_abs_weight", "idx", "frac"):
        assert torch.equal(getattr(moved, name), getattr(picked, name)), name
    # Control: the grid over max|W| puts the test weights elsewhere.
    idx, _ = grid_interpolation(picked.weights, picked.max_abs_weight, picked.grid_size)
    assert not torch.equal(idx, moved.idx)


@pytest.mark.parametrize("budget", [None, 2**22])
def test_a_layers_objective_does_not_depend_on_the_layers_beside_it(budget):
    # The reference's periphery with bound management, on tiles whose readouts clip (weights
    # with a mean): the repeated readouts' draws too are the layer's own.
    gen = torch.Generator().manual_seed(0)
    layers = [gpuwpo.student_t_weights((64, 64), generator=gen) + 0.6 for _ in range(4)]
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0)
    obj = gpuwpo.TNMSEObjective(layers, gpuwpo.PCMLikeNoiseModel(g_max=25.0),
                                gpuwpo.GlobalDriftCompensation.aihwkit_default(), [1.0, 86400.0],
                                space, memory_budget=budget, physics="aihwkit")
    x = torch.rand(4, 30, space.dim, generator=gen)
    whole = obj(x, 123)
    for subset in ([0, 2], [1, 3], [1]):
        part = obj.select_layers(subset)
        assert part.layer_ids == tuple(subset)
        assert torch.equal(part(x[subset], 123), whole[subset])


def test_per_layer_warm_starts_are_cut_to_each_part():
    weights = _network(3)
    x0 = torch.rand(3, gpuwpo.StrategySpace([None, None], 0.0, 25.0).dim,
                    generator=torch.Generator().manual_seed(1))
    whole = _run(weights, x0=x0, maxiter=6)
    _assert_same(whole, _run(weights, x0=x0, maxiter=6, distributed=InProcess([[2], [0, 1]])))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"per_layer": False}, "per_layer=False"),
    ({"backend": "scipy"}, "torch engine"),
    ({"callback": print}, "callback"),
    ({"checkpoint": "run.ckpt"}, "checkpoint"),
    ({"resume": "run.ckpt"}, "resume"),
])
@pytest.mark.parametrize("executor", [RayCluster(workers=2), InProcess([[0], [1]])])
def test_what_a_distributed_run_cannot_honour_is_refused_before_any_work(kwargs, match,
                                                                         executor):
    with pytest.raises(ValueError, match=match):
        _run(_network(2), distributed=executor, **kwargs)


def test_tasks_that_are_not_a_partition_of_the_layers_are_refused():
    with pytest.raises(ValueError, match=r"not a partition of the 3 layers"):
        _run(_network(3), maxiter=2, distributed=InProcess([[0, 1], [1, 2]]))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workers": 0}, "workers"), ({"gpus_per_worker": 2}, "gpus_per_worker"),
    ({"cpus_per_worker": 0}, "cpus_per_worker"), ({"layers_per_task": 0}, "layers_per_task"),
    ({"max_retries": -1}, "max_retries"), ({"address": 6379}, "address"),
])
def test_bad_cluster_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RayCluster(**kwargs)


def test_tasks_are_more_than_workers_so_that_freed_workers_take_queued_work():
    assert RayCluster(workers=2).plan(72)[:2] == [list(range(9)), list(range(9, 18))]
    assert len(RayCluster(workers=2).plan(72)) == 8
    assert RayCluster(workers=2, layers_per_task=1).plan(3) == [[0], [1], [2]]
    assert RayCluster(workers=4).plan(3) == [[0], [1], [2]]


def test_importing_gpuwpo_does_not_import_ray():
    code = "import sys, gpuwpo; gpuwpo.RayCluster(workers=1); assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------------------------
# on a local Ray cluster


@pytest.fixture
def ray_stopped():
    """Ray is shut down after the test, whatever happened in it."""
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_on_ray_a_killed_worker_costs_its_progress_since_its_checkpoint_only(ray_stopped):
    ray = ray_stopped
    weights = _network()
    whole = _run(weights)
    hierarchical_whole = _run(weights, hierarchical=True)

    events = []

    def on_event(event):
        events.append(event)
        # Kill the worker of task 0 after its first checkpoint (once).
        if (event.kind == "checkpoint" and event.task == 0 and event.attempt == 0
                and event.stage == "layers" and not any(e.kind == "retry" for e in events)):
            os.kill(event.pid, signal.SIGKILL)

    with RayCluster(workers=2, layers_per_task=1, on_event=on_event) as cluster:
        part = _run(weights, distributed=cluster)
        assert ray.is_initialized()  # the context keeps the cluster for the next run
        hierarchical_part = _run(weights, hierarchical=True, distributed=cluster)
    assert not ray.is_initialized()
    assert cluster.startup_s > 0

    _assert_same(whole, part)
    _assert_same(hierarchical_whole, hierarchical_part)
    layers = [e for e in events if e.stage == "layers"]
    retry = [e for e in layers if e.kind == "retry"]
    assert len(retry) == 1 and retry[0].task == 0 and retry[0].generation == 3
    # the task ran again from its checkpoint (generation 3), not from the start
    again = [e for e in layers if e.kind == "start" and e.task == 0 and e.attempt == 1]
    assert len(again) == 1 and again[0].generation == 3 and again[0].pid != retry[0].pid
    first = [e.generation for e in layers if e.kind == "checkpoint" and e.task == 0][:2]
    assert first == [3, 6]
    # both workers took tasks (a queue, not one worker doing all), every task ended once per run
    assert len({e.pid for e in layers if e.kind == "start" and e.attempt == 0}) >= 2
    assert sorted(e.task for e in layers if e.kind == "done") == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [e.kind for e in events if e.stage == "global"][-1] == "done"


def _weights_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "net.safetensors"
    save_file(_network(3), str(path))
    return path


TINY = ["--popsize", "2", "--maxiter", "4", "--test-size", "16", "8", "--baseline-iterations",
        "2", "--validation-repeats", "2", "--times", "1,1h,1y", "--quiet"]


def test_cli_workers_without_ray_is_refused(tmp_path, capsys):
    from gpuwpo.cli import main

    assert main(["optimize", str(_weights_file(tmp_path)), "--workers", "2", *TINY]) == 2
    assert "give --ray too" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_ray_starts_and_stops_a_local_cluster_with_the_same_result(ray_stopped, tmp_path,
                                                                       capsys):
    from gpuwpo.cli import main
    from gpuwpo.io import load_result

    ray = ray_stopped
    path = _weights_file(tmp_path)
    one, sharded = tmp_path / "one.json", tmp_path / "sharded.json"
    assert main(["optimize", str(path), *TINY, "--out", str(one)]) == 0
    assert main(["optimize", str(path), *TINY, "--ray", "--workers", "2",
                 "--out", str(sharded)]) == 0, capsys.readouterr().err
    assert not ray.is_initialized()
    _assert_same(load_result(one), load_result(sharded))


@pytest.mark.slow
def test_distributed_benchmark_quick(ray_stopped, tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "distributed.py"
    spec = importlib.util.spec_from_file_location("bench_distributed", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = module.main(["--quick", "--out-dir", str(tmp_path)])
    (path,) = tmp_path.glob("distributed-*.json")
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps({"benchmark": "distributed", **record}))
    assert written["quick"] is True and "REDUCED" in written["budget_note"]
    r = written["result"]
    assert [row["workers"] for row in r["runs"]] == [0, 1, 2]
    assert r["identical"] is True and r["ray_startup_s"] > 0 and r["ray_warmup_s"] > 0
    for row in r["runs"]:
        assert row["wall_time_s"] > 0 and row["generations"] == 2 and row["candidates"] > 0
    assert r["runs"][1]["speedup_vs_one_worker"] == 1.0
    assert not ray_stopped.is_initialized()
    assert "speed-up vs 1 worker" in capsys.readouterr().out
