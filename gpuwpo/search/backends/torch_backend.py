"""The torch differential-evolution backend: all layers in one tensor program.

Runs :func:`gpuwpo.search.de.de_minimize` on the problem's device with noise-robust selection
(parents
re-evaluated with their trials under common random numbers) and saves its state into one
checkpoint file (:mod:`gpuwpo.search.checkpoint`: tensors and JSON, no pickle) to resume from.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..checkpoint import (
    Checkpoint,
    Checkpointing,
    Stage,
    read_checkpoint,
    search_fingerprint,
    write_checkpoint,
)
from ..de import DEResult, DEState, de_init, de_minimize, state_from_dict, state_to_dict
from ..options import SearchOptions, de_accepts
from .base import IntermediateResult, SearchOutcome, SearchProblem, notify

__all__ = ["search", "accepts", "save_checkpoint", "load_checkpoint"]

#: What a stage of this backend holds (its meta's ``kind``).
_KIND = "torch-de"


def _record(state: DEState) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = state_to_dict(state)
    return tensors, {"kind": _KIND, "state": meta}


def _restore(path, stage: str, tensors: dict, meta: dict,
             device: torch.device | str | None = None) -> DEState:
    """The DEState of a stage read from ``path``; a ValueError naming ``path`` otherwise."""
    if meta.get("kind") != _KIND or not isinstance(meta.get("state"), dict):
        raise ValueError(f"checkpoint {path}: stage {stage!r} holds no torch DE state (kind "
                         f"{meta.get('kind')!r})")
    try:
        state = state_from_dict(tensors, meta["state"], device=device)
    except (KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path}: stage {stage!r} is incomplete ({err})") from None
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}") from None
    B, S, D = state.population.shape if state.population.dim() == 3 else (0, 0, 0)
    shapes = {"energies": (B, S), "converged": (B,), "nit_layer": (B,), "nfev": (B,),
              "history": (B, state.nit)}
    if not B or any(tuple(getattr(state, k).shape) != v for k, v in shapes.items()):
        raise ValueError(f"checkpoint {path}: stage {stage!r} holds a DE state of inconsistent "
                         f"shapes")
    return state


def save_checkpoint(path: str | os.PathLike, state: DEState, fingerprint: dict | None = None,
                    stage: str = "search") -> None:
    """Save a :class:`gpuwpo.search.de.DEState` alone as a one-stage checkpoint file ``path``
    (:mod:`gpuwpo.search.checkpoint`: one safetensors file, written atomically, no pickle)."""
    write_checkpoint(path, Checkpoint(dict(fingerprint or {}), {stage: _record(state)}))


def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None,
                    stage: str | None = None) -> tuple[DEState, Checkpoint]:
    """The DEState of ``stage`` (default: the last one saved) of the checkpoint file ``path``,
    and the whole :class:`gpuwpo.search.checkpoint.Checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a checkpoint, a torn or corrupted one, or no such stage (naming it).
    """
    checkpoint = read_checkpoint(path)
    if not checkpoint.stages:
        raise ValueError(f"checkpoint {path} holds no search state")
    name = list(checkpoint.stages)[-1] if stage is None else stage
    if name not in checkpoint.stages:
        raise ValueError(f"checkpoint {path} has no stage {name!r}; it has "
                         f"{', '.join(checkpoint.stages)}")
    tensors, meta = checkpoint.stages[name]
    return _restore(path, name, tensors, meta, device), checkpoint


def accepts(options: SearchOptions) -> frozenset[str]:
    """The search options this backend honours: the DE's, parent re-evaluation, checkpoints."""
    return de_accepts(options, frozenset({"noise_robust", "checkpoint", "checkpoint_every",
                                          "resume"}))


def search(
    problem: SearchProblem,
    options: SearchOptions,
    *,
    progress: Callable[[IntermediateResult], None] | None = None,
    skip_converged: bool = True,
    stage: Stage | None = None,
) -> SearchOutcome:
    """Differential evolution in torch over all layers at once.

    The options' callback receives an :class:`IntermediateResult` after every generation and may
    stop the run by returning True or raising StopIteration. ``skip_converged`` evaluates only
    the layers still searching (converged layers are frozen, their energies unused); the result
    is identical either way because every layer's noise is keyed by its index.

    Checkpoints (:mod:`gpuwpo.search.checkpoint`): ``stage`` is the stage of a run whose
    fingerprint the caller made (the optimizer's: weights, physics, settings, seed); without
    it, the options ``checkpoint``/``resume`` make a run of one stage fingerprinted by the
    problem's shape and the options alone. The state is saved every ``checkpoint_every``
    generations, at the end, and when a KeyboardInterrupt stops the search (the last complete
    generation); a resumed search continues the saved state and ends exactly as the
    uninterrupted one would.
    """
    o = options
    checkpoint = stage
    if checkpoint is None:
        run = Checkpointing.from_options(o, search_fingerprint(problem, o, "torch"))
        checkpoint = None if run is None else run.stage("search")
    saved = None if checkpoint is None else checkpoint.resumed()
    if saved is not None:
        source = checkpoint.source
        state = _restore(source, checkpoint.name, *saved, device=problem.device)
        if tuple(state.population.shape[::2]) != (problem.num_layers, problem.dim):
            raise ValueError(f"checkpoint {source} holds a search of shape "
                             f"{tuple(state.population.shape)}, not B={problem.num_layers}, "
                             f"D={problem.dim}")
        if state.nit > o.maxiter:
            raise ValueError(f"checkpoint {source} is at generation {state.nit}, past "
                             f"maxiter={o.maxiter}; resume with maxiter >= {state.nit}")
    else:
        init = o.x_init
        if isinstance(init, torch.Tensor):
            init = init.to(device=problem.device, dtype=problem.dtype)
        x0 = None if o.x0 is None else torch.as_tensor(o.x0).to(device=problem.device,
                                                              dtype=problem.dtype)
        state = de_init(dim=problem.dim, num_layers=problem.num_layers, popsize=o.popsize,
                        init=init, x0=x0, strategy=o.strategy, mutation=o.mutation,
                        recombination=o.recombination, tol=o.tol, atol=o.atol, seed=o.seed,
                        device=problem.device, dtype=problem.dtype, layer_ids=problem.layer_ids)

    # Evaluation number -> noise seed: the initial population is call 0, generation g is call g,
    # so a resumed run draws exactly the noise the uninterrupted run would have drawn.
    calls = [state.nit + 1 if state.evaluated else 0]
    frozen = [state.converged.clone()]

    def fn(x: torch.Tensor) -> torch.Tensor:
        active = ~frozen[0]
        if not (skip_converged and problem.supports_layers) or bool(active.all()):
            out = problem.loss(x, calls[0])
        else:
            # Frozen layers' energies are ignored by de_tell: do not compute them.
            out = torch.full(x.shape[:2], float("inf"), dtype=x.dtype, device=x.device)
            index = active.nonzero().squeeze(1)
            if index.numel():
                out[index] = problem.loss(x[index], calls[0], layers=index).to(x.dtype)
        calls[0] += 1
        return out

    saves = checkpoint is not None and checkpoint.saves
    latest = [state]

    def on_generation(result: DEResult) -> bool:
        frozen[0] = result.converged.clone()
        latest[0] = result.state
        if saves and result.nit % checkpoint.every == 0:
            checkpoint.save(*_record(result.state))
        info = IntermediateResult(result.nit, result.x, result.fun, result.history,
                                  int(result.nfev.sum()), result.converged)
        return notify(o.callback, progress, info)

    try:
        result = de_minimize(fn, maxiter=o.maxiter, callback=on_generation,
                             reevaluate_parents=o.noise_robust, state=state)
    except KeyboardInterrupt:
        # Nothing lost: the last complete generation is where a resumed run continues.
        if saves and latest[0].evaluated and latest[0].nit > 0:
            checkpoint.save(*_record(latest[0]))
        raise
    if saves:
        checkpoint.save(*_record(result.state))
    return SearchOutcome(
        x=result.x, fun=result.fun, nit=result.nit,
        nfev=int(result.nfev.sum()), converged=result.converged,
        stop_reason=result.stop_reason, message=result.message, history=result.history,
        extra={"de_result": result},
    )
