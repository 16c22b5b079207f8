"""The ``gpuwpo`` sub-commands: layers, optimize, evaluate, plot, example.

Each takes the parsed arguments (:mod:`gpuwpo.cli.arguments`), checks before any work that its
inputs can be read and its outputs written (never over an input, a results file only over a
results file), and returns the exit status. The settings a run uses are merged by
:mod:`gpuwpo.network.settings`; here they are only used.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import torch

from .. import example
from ..checks import check_weights
from ..io.common import same_file
from ..network.settings import (
    mappings_from_settings,
    merge_physics,
    merge_settings,
    physics_from_settings,
)
from .arguments import given_physics, given_settings
from .config import read_config

__all__ = ["layers", "optimize", "evaluate", "plot", "example", "HANDLERS", "FIGURES",
           "EXAMPLE_FILES"]


def _say(args: argparse.Namespace, text: str) -> None:
    """A progress message (stdout), silenced by --quiet; results are always printed."""
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def _check_device(device: str | None) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return device


#: The figures a plots directory receives (``_write_plots``).
FIGURES = ("programming_curves.png", "convergence.png", "weight_errors.png")
#: What ``gpuwpo example --out DIR`` writes into DIR (gpuwpo.example).
EXAMPLE_FILES = example.OUTPUT_FILES


def _check_out_file(path: str | None, inputs: Sequence[str | None], what: str = "--out"
                    ) -> None:
    """Fail before any work, not after it, when a results file cannot or must not be written."""
    from ..io import check_output_file

    if path is not None:
        check_output_file(path, inputs=[p for p in inputs if p], what=what)


def _check_out_dir(path: str | None, inputs: Sequence[str | None], what: str,
                   files: Sequence[str]) -> None:
    """Fail before any work when the directory ``path`` cannot receive ``files``.

    It is a directory or can be made one (its nearest existing ancestor is a directory in which
    files can be created), and none of the files it will receive is an input or a directory.
    """
    from .._files import check_writable_dir

    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} exists and is not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    check_writable_dir(existing, f"{what} {path}")
    for name in files:
        target = os.path.join(path, name)
        if os.path.isdir(target):
            raise ValueError(f"{what} {path}: {target} is a directory; it would be replaced by "
                             f"a file")
        for given in inputs:
            if given and same_file(target, given):
                raise ValueError(f"{what} {path} would overwrite {target}, which this run "
                                 f"also reads or writes; choose another directory")


def _check_checkpoint(options, out: str | None) -> None:
    """Before any work: the checkpoint to resume is whole, the one to save can be written."""
    from ..search.checkpoint import check_target, read_checkpoint

    if options.resume is not None:
        read_checkpoint(options.resume)
    if options.checkpoint is not None:
        check_target(options.checkpoint, resume=options.resume)
        if out and os.path.abspath(out) == os.path.abspath(options.checkpoint):
            raise ValueError(f"--out and --checkpoint both name {out}; give two files")


def _ray_cluster(args: argparse.Namespace):
    """The RayCluster of ``--ray [ADDRESS] --workers N --gpus-per-worker G``, or None."""
    address = getattr(args, "ray", None)
    workers, gpus = getattr(args, "workers", None), getattr(args, "gpus_per_worker", None)
    if address is None:
        if workers is not None or gpus is not None:
            raise ValueError("--workers and --gpus-per-worker shard the layers over Ray "
                             "workers: give --ray too")
        return None
    from ..network.distributed import RayCluster

    return RayCluster(address=address or None, workers=workers, gpus_per_worker=gpus or 0)


def _read_weights(args: argparse.Namespace, path: str):
    """The weights at ``path`` (``--key`` picks the dict inside a checkpoint); the reader's note
    (what it left out) is printed as one line, unless --quiet."""
    from ..io import load_weights

    weights = load_weights(path, key=getattr(args, "key", None))
    if weights.note:
        _say(args, f"note: {weights.note}")
    return weights


def layers(args: argparse.Namespace) -> int:
    """``gpuwpo layers``: what a weights file's layers are (programmed, then skipped and why)."""
    from ..network.layers import describe_layers

    weights = _read_weights(args, args.weights)
    table = describe_layers(weights, args.include, args.exclude)
    if not table.layers:  # the same refusal as optimize's, naming what was skipped and why
        from ..network.layers import select_weights

        select_weights(weights, args.include, args.exclude)
    print(f"{args.weights}: {table.summary()}")
    print(table.table())
    return 0


def optimize(args: argparse.Namespace) -> int:
    """``gpuwpo optimize``: search the layers of a weights file, print the summary, write the
    results (``--out``) and figures (``--plots``)."""
    from ..io import save_result
    from ..network import optimize_network
    from ..network.layers import describe_layers, select_weights

    config = read_config(args.config) if "config" in vars(args) else None
    run = merge_settings(given_settings(args), config)
    device = _check_device(run.pop("device"))
    options = run["options"]
    _check_test_size(options)
    out, plots = getattr(args, "out", None), getattr(args, "plots", None)
    inputs = [args.weights, getattr(args, "config", None), options.resume]
    _check_out_file(out, inputs)
    _check_out_dir(plots, [*inputs, out], "--plots", FIGURES)
    _check_checkpoint(options, out)
    weights = _read_weights(args, args.weights)
    # Select here so that a typo in --include fails at once, naming the layers; the same rule
    # as optimize_network's (gpuwpo.network.layers) and as 'gpuwpo layers' shows.
    table = describe_layers(weights, run["include"], run["exclude"])
    if not table.layers:
        select_weights(weights, run["include"], run["exclude"])  # refuses, naming the skipped
    selected = {layer.name: weights[layer.name] for layer in table.layers}
    for name, w in selected.items():  # NaN, all zeros: named with the file, at once
        check_weights(w, f"{args.weights}: the weights of layer {name!r}", allow_all_zero=False)
    _say(args, table.summary())
    cluster = _ray_cluster(args)
    result = optimize_network(weights, **run, device=device, distributed=cluster)
    if cluster is not None:
        _say(args, f"ray: {cluster.num_workers} worker(s); the cluster took "
                   f"{cluster.startup_s:.1f} s to start or connect")
    # What the run compared with and what it searched, above the summary's table.
    print(_comparison(run["g_converter_baseline"], options))
    print(result.summary())
    if out:
        save_result(result, out)
        _say(args, f"wrote {out}")
    if plots:
        for path in _write_plots(result, plots, selected, repeats=2, seed=options.seed):
            _say(args, f"wrote {path}")
    return 0


def _comparison(baseline, options) -> str:
    """What a run compares with and what it searches, in one line: "baseline: DualPair
    f=[1, 1], per-column mapping; strategies: per-column mapping, clip searched in [0.5, 1]"."""
    from ..device.mapping import Recipe, describe_mapping, describe_recipe

    clip = ("clip searched in [{:g}, {:g}]".format(*options.clip_range)
            if options.clip_range is not None else
            f"clip {options.clip:g}" if options.clip != 1.0 else "no clip")
    return (f"baseline: {describe_recipe(Recipe(baseline, options.baseline_mapping))}; "
            f"strategies: {describe_mapping(options.mapping)}, {clip}")


def _baseline_mapping(args: argparse.Namespace, settings: Mapping) -> str:
    """The baseline's mapping of ``evaluate`` and ``plot``: ``--baseline-mapping`` if given,
    else the one the results file records (``"layer"`` for files written before it)."""
    given = getattr(args, "baseline_mapping", None)
    return given if given is not None else mappings_from_settings(
        settings, path=args.results)["baseline_mapping"]


def _check_test_size(options) -> None:
    """A test tile too large to allocate is refused before any work (gpuwpo.search.tiles)."""
    from ..search.tiles import MAX_TEST_WEIGHTS

    size_in, size_out = options.test_in_features, options.test_out_features
    if size_in is not None and size_in * size_out > MAX_TEST_WEIGHTS:
        raise ValueError(f"--test-size {size_in} {size_out}: {size_in * size_out} test weights "
                         f"per layer, more than the {MAX_TEST_WEIGHTS} gpuwpo allows")


def evaluate(args: argparse.Namespace) -> int:
    """``gpuwpo evaluate``: TNMSE over time of the baseline and of a results file's strategies,
    per layer and overall.

    Each layer is simulated at its crossbar shape (:func:`gpuwpo.network.layers.as_matrix`), in
    float32, baseline and strategy on the same noise (:func:`gpuwpo.device.simulate.
    converter_errors` with both recipes; the layer's index keys its noise). The baseline is the
    baseline converter under the results file's ``baseline_mapping`` (``--baseline-mapping``
    overrides it); where that is not the layer-wise mapping, the layer-wise baseline is
    simulated on the same noise too and printed in its own column, so that figures against it
    (earlier runs') stay comparable. A layer larger than
    :data:`gpuwpo.device.simulate.SAMPLE_WEIGHTS` weights is estimated from a fresh sample of
    whole rows per programming (the standard errors include the sampling) unless ``--full``
    asks for every weight; the output says which layers were sampled and how.
    """
    from ..device.mapping import Recipe, describe_recipe
    from ..device.simulate import SAMPLE_WEIGHTS, converter_errors, sample_rows_for
    from ..io import load_result
    from ..network.layers import as_matrix

    result = load_result(args.results)
    weights = _read_weights(args, args.weights)  # --key: the dict inside a checkpoint
    recorded = physics_from_settings(result.settings, path=args.results)
    phys = merge_physics(given_physics(args), recorded)
    t_steps = args.times if getattr(args, "times", None) is not None else recorded["t_steps"]
    _check_device(getattr(args, "device", None))
    device = getattr(args, "device", None) or "cpu"
    full = bool(getattr(args, "full", False))
    baseline = Recipe(phys["baseline"], _baseline_mapping(args, result.settings))
    # The layer-wise baseline beside a baseline of another mapping: the figure earlier runs
    # (and the reference's optimiser) compare with.
    layerwise = None if baseline.mapping == "layer" else Recipe(phys["baseline"], "layer")
    # Every layer is checked before any work: a missing tensor or another shape fails at once.
    tiles = []
    for layer in result.layers:
        if layer.name not in weights:
            raise ValueError(f"{args.weights} has no tensor {layer.name!r} (the results file's "
                             f"layer); it holds {list(weights)[:10]}")
        w = weights[layer.name]
        if tuple(w.shape) != tuple(layer.shape):
            raise ValueError(f"{args.weights}: {layer.name!r} has shape {tuple(w.shape)}, the "
                             f"results file was made for {tuple(layer.shape)}")
        w = check_weights(w, f"{args.weights}: the weights of layer {layer.name!r}",
                          allow_all_zero=False)
        # float32 is the physics' precision everywhere else too (the search's, program_model's).
        w = as_matrix(w.detach()).to(device=device, dtype=torch.float32)
        tiles.append((layer, w, None if full else sample_rows_for(w.shape, SAMPLE_WEIGHTS)))
    sizes, base_rows, opt_rows, layerwise_rows, lines = [], [], [], [], []
    progress = tiles
    try:
        from tqdm.auto import tqdm

        progress = tqdm(tiles, desc="evaluate", unit="layer", leave=False, disable=args.quiet)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    # One intra-op thread on the CPU unless OMP_NUM_THREADS asks for more: a sample's tensors
    # (8 programmings x 4 devices x ~33k weights) gain little from a second thread, and on a
    # CPU shared with other work every op of two threads waits for the descheduled one
    # (measured on this project's 2-core machine under load: 0.5 s per MiniLM layer on one
    # thread, 5 to 14 s on two). Restored afterwards: the setting is process-wide.
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        for index, (layer, w, rows) in enumerate(progress):
            # Both converters on the same draws (paired), in one pass; the layer's index keys
            # its noise, so its figures do not depend on the other layers.
            recipes = [baseline, layer.recipe] + ([] if layerwise is None else [layerwise])
            errors = converter_errors(
                w, recipes, phys["noise_model"], t_steps,
                compensation=phys["compensation"], physics=phys["physics"],
                repeats=args.repeats, generator=args.seed, layer_id=index,
                sample_rows=rows).double()  # [2 or 3, repeats, T]
            base, opt, *flat = ((e.mean(0), e.std(0) / errors.shape[1] ** 0.5) for e in errors)
            sizes.append(w.numel())
            base_rows.append(base)
            opt_rows.append(opt)
            layerwise_rows.extend(flat)
            title = f"{layer.name} {tuple(layer.shape)}, {layer.mapping} mapping"
            if rows is not None:
                title += f", a sample of {rows} of its {w.shape[0]} rows per programming"
            lines.append(_table(title, t_steps, base, opt, *flat))
    finally:
        torch.set_num_threads(threads)
    # Overall: layers weighted by their number of weights (the network's total weight error).
    share = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)

    def combine(rows):
        mean = sum(s * r[0].double() for s, r in zip(share, rows))
        sem = sum((s * r[1].double()) ** 2 for s, r in zip(share, rows)).sqrt()
        return mean, sem

    overall = _table("overall (weighted by layer size)", t_steps, combine(base_rows),
                     combine(opt_rows), *([combine(layerwise_rows)] if layerwise_rows else []))
    print(f"TNMSE over time in physics={phys['physics']!r}, {args.repeats} programmings per "
          f"layer and time (mean +- standard error; lower is better)")
    print(f"baseline: {describe_recipe(baseline)}" + (
        "" if layerwise is None else
        f"; the layer-wise baseline ({describe_recipe(layerwise)}) on the same noise, the "
        f"figure runs against it report"))
    sampled = sum(rows is not None for _, _, rows in tiles)
    if sampled:
        print(f"{sampled} of {len(tiles)} layer(s) hold more than {SAMPLE_WEIGHTS} weights: "
              f"each of their programmings simulates a fresh random sample of whole rows (the "
              f"rows of the largest |W| and a uniform draw of the others, at least "
              f"{SAMPLE_WEIGHTS} weights), an estimate of the whole layer's figure whose "
              f"standard error includes the sampling; --full simulates every weight")
    print("\n\n".join([*lines, overall]))
    return 0


def _table(title: str, t_steps: Sequence[float], base, opt, layerwise=None) -> str:
    """One layer's (or the network's) table: per time the baseline's and the optimised TNMSE
    (mean +- standard error) and the gain; with ``layerwise`` (mean, SE) also the layer-wise
    baseline and the gain against it. Last row: the TNMSE (mean over the times)."""
    from ..plots import time_label

    columns = [base, opt] + ([] if layerwise is None else [layerwise])

    def gain(b: float, o: float) -> str:
        return f"{100 * (1 - o / b):6.1f}%" if b > 0 else f"{'n/a':>7}"

    def cells(i: int | None) -> list[tuple[float, float]]:
        # (mean, SE) of every column at time i, or over the times (the TNMSE) for None.
        n = len(t_steps)
        if i is None:
            return [(float(m.mean()), float((s.double() ** 2).sum().sqrt()) / n)
                    for m, s in columns]
        return [(float(m[i]), float(s[i])) for m, s in columns]

    def row(label: str, values: list[tuple[float, float]]) -> str:
        (b, bs), (o, osem) = values[:2]
        text = (f"  {label:>10} {b:10.5f} +- {bs:<7.5f}{o:10.5f} +- {osem:<7.5f}"
                f"{gain(b, o)}")
        if layerwise is not None:
            lw, lws = values[2]
            text += f" {lw:10.5f} +- {lws:<7.5f}{gain(lw, o):>13}"
        return text

    head = f"  {'time':>10} {'baseline':>20} {'optimised':>20} {'gain':>7}"
    if layerwise is not None:
        head += f" {'layer-wise baseline':>20} {'vs layer-wise':>13}"
    rows = [title, head]
    rows += [row(time_label(t), cells(i)) for i, t in enumerate(t_steps)]
    rows.append(row("TNMSE", cells(None)))
    return "\n".join(rows)


def _write_plots(result, out_dir: str, weights: Mapping[str, torch.Tensor] | None, *,
                 repeats: int = 2, seed: int = 0, phys: Mapping | None = None,
                 source: str | None = None, baseline_mapping: str | None = None) -> list[str]:
    """The figures of a result into ``out_dir``; returns the paths written.

    ``phys``: the physics of the weight-error figure (default: what the result records);
    ``source``: the results file the result was read from (named in errors);
    ``baseline_mapping``: the baseline's mapping (default: what the result records).
    """
    from .. import plots
    from ..device.mapping import Recipe

    recorded = physics_from_settings(result.settings, path=source)
    phys = recorded if phys is None else phys
    if baseline_mapping is None:
        baseline_mapping = mappings_from_settings(result.settings,
                                                  path=source)["baseline_mapping"]
    baseline = Recipe(phys["baseline"], baseline_mapping)
    os.makedirs(out_dir, exist_ok=True)
    figures = {"programming_curves.png": lambda path: plots.programming_curves(
                   result, baseline, path=path),
               "convergence.png": lambda path: plots.convergence(result, path=path)}
    if weights is not None:
        figures["weight_errors.png"] = lambda path: plots.weight_error_histograms(
            result, weights, recorded["t_steps"], noise_model=phys["noise_model"],
            baseline=baseline, compensation=phys["compensation"],
            physics=phys["physics"], repeats=repeats, seed=seed, path=path)
    written, drawn = [], []
    for name, draw in figures.items():
        written.append(os.path.join(out_dir, name))
        drawn.append(draw(written[-1]))
    import matplotlib.pyplot as plt  # on the backend gpuwpo.plots chose

    for figure in drawn:  # a long-lived process must not keep every figure alive
        plt.close(figure)
    return written


def plot(args: argparse.Namespace) -> int:
    """``gpuwpo plot``: the figures of a results file (PNG)."""
    from ..io import load_result

    _check_device(getattr(args, "device", None))
    if getattr(args, "key", None) is not None and not getattr(args, "weights", None):
        raise ValueError("--key picks the tensors inside --weights: give --weights too")
    _check_out_dir(args.out, [args.results, getattr(args, "weights", None)], "--out", FIGURES)
    result = load_result(args.results)
    weights = _read_weights(args, args.weights) if getattr(args, "weights", None) else None
    for layer in result.layers if weights is not None else []:
        if layer.name not in weights:
            raise ValueError(f"{args.weights} has no tensor {layer.name!r} (a layer of "
                             f"{args.results}); it holds {list(weights)[:10]}")
        if tuple(weights[layer.name].shape) != tuple(layer.shape):
            raise ValueError(f"{args.weights}: {layer.name!r} has shape "
                             f"{tuple(weights[layer.name].shape)}, {args.results} was made for "
                             f"{tuple(layer.shape)}")
        check_weights(weights[layer.name], f"{args.weights}: the weights of layer {layer.name!r}",
                      allow_all_zero=False)
    phys = merge_physics(given_physics(args),
                         physics_from_settings(result.settings, path=args.results))
    for path in _write_plots(result, args.out, weights, repeats=args.repeats, seed=args.seed,
                             phys=phys, source=args.results,
                             baseline_mapping=_baseline_mapping(args, result.settings)):
        print(f"wrote {path}")
    return 0


def example(args: argparse.Namespace) -> int:
    """``gpuwpo example``: the digits example (:func:`gpuwpo.example.run_example`)."""
    from ..example import run_example

    phys = merge_physics(given_physics(args))
    out = getattr(args, "out", None)
    _check_out_dir(out, [], "--out", EXAMPLE_FILES)
    if out is not None and os.path.lexists(os.path.join(out, "digits_result.json")):
        # An earlier example's results are replaced; anything else of that name is refused.
        _check_out_file(os.path.join(out, "digits_result.json"), [], "--out")
    run_example(quick=args.quick, out_dir=out, seed=args.seed,
                repeats=getattr(args, "repeats", None), backend=args.backend,
                device=_check_device(getattr(args, "device", None)), progress=not args.quiet,
                physics=phys["physics"], noise_model=phys["noise_model"],
                baseline=phys["baseline"], compensation=phys["compensation"])
    return 0


#: sub-command -> its handler (:data:`gpuwpo.cli.arguments.COMMANDS` holds their help)
HANDLERS = {"layers": layers, "optimize": optimize, "evaluate": evaluate, "plot": plot,
            "example": example}
