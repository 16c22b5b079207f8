"""The torch differential-evolution backend: all layers in one tensor program.

Runs :func:`gpuwpo.search.de.de_minimize` on the problem's device with noise-robust selection
(parents re-evaluated with their trials under common random numbers) and saves its state into
one checkpoint file (:mod:`gpuwpo.search.checkpoint`: tensors and JSON, no pickle) to resume
from. It reports ``x``, ``fun``, ``history`` and ``nit`` with the meanings of
:mod:`gpuwpo.search.backends.base`: with noise-robust selection the incumbent (member 0) is
always among the latest call's candidates; without it, member 0 may hold an older draw and is
measured again on the generation's noise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..checkpoint import (
    Checkpoint,
    Checkpointing,
    PeriodicCheckpoint,
    Stage,
    read_checkpoint,
    search_fingerprint,
    write_checkpoint,
)
from ..de import DEResult, DEState, de_init, de_minimize, state_from_dict, state_to_dict
from ..options import SearchOptions, de_accepts
from .base import IntermediateResult, SearchOutcome, SearchProblem, incumbent_loss, notify

__all__ = ["search", "accepts", "save_checkpoint", "load_checkpoint"]

#: What a stage of this backend holds (its meta's ``kind``).
_KIND = "torch-de"


class _Progress(NamedTuple):
    """The backend's state at the end of a generation: the DE's, and what it reports (the
    meanings of :mod:`gpuwpo.search.backends.base`)."""

    state: DEState
    fun: torch.Tensor  # [B] each incumbent's loss on its layer's latest noise
    history: torch.Tensor  # [B, nit] fun after each generation
    remeasured: int  # incumbents evaluated once more (not in the DE's own nfev)

    @classmethod
    def of(cls, state: DEState) -> _Progress:
        """Of a state alone (saved by :func:`save_checkpoint`): its own energies' figures."""
        return cls(state, state.best_fun, state.history, 0)


def _record(progress: _Progress) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = state_to_dict(progress.state)
    tensors = {**tensors, "reported_fun": progress.fun, "reported_history": progress.history}
    return tensors, {"kind": _KIND, "state": meta, "remeasured": progress.remeasured}


def _restore(path, stage: str, tensors: dict, meta: dict,
             device: torch.device | str | None = None) -> _Progress:
    """The progress of a stage read from ``path``; a ValueError naming ``path`` otherwise."""
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
    if "reported_fun" not in tensors:  # a state saved alone: its own energies are its figures
        return _Progress.of(state)
    progress = _Progress(state, tensors["reported_fun"].to(state.energies),
                         tensors["reported_history"].to(state.energies),
                         int(meta.get("remeasured", 0)))
    if (tuple(progress.fun.shape) != (B,)
            or tuple(progress.history.shape) != (B, state.nit)):
        raise ValueError(f"checkpoint {path}: stage {stage!r} holds reported figures of "
                         f"inconsistent shapes")
    return progress


def save_checkpoint(path: str | os.PathLike, state: DEState, fingerprint: dict | None = None,
                    stage: str = "search") -> None:
    """Save a :class:`gpuwpo.search.de.DEState` alone as a one-stage checkpoint file ``path``
    (:mod:`gpuwpo.search.checkpoint`: one safetensors file, written atomically, no pickle)."""
    write_checkpoint(path, Checkpoint(dict(fingerprint or {}),
                                      {stage: _record(_Progress.of(state))}))


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
    return _restore(path, name, tensors, meta, device).state, checkpoint


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
    generation; :class:`gpuwpo.search.checkpoint.PeriodicCheckpoint`); a resumed search
    continues the saved state and ends exactly as the uninterrupted one would.
    """
    o = options
    checkpoint = stage
    if checkpoint is None:
        run = Checkpointing.from_options(o, search_fingerprint(problem, o, "torch"))
        checkpoint = None if run is None else run.stage("search")
    saved = None if checkpoint is None else checkpoint.resumed()
    resumed = None
    if saved is not None:
        source = checkpoint.source
        resumed = _restore(source, checkpoint.name, *saved, device=problem.device)
        state = resumed.state
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
    latest_call: list = [None, None]  # the last call's candidates [B, P, D] and losses [B, P]

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
        latest_call[:] = [x, out]
        return out

    progress_now = [resumed if resumed is not None else _Progress(
        state, torch.full((problem.num_layers,), float("inf"), dtype=state.energies.dtype,
                          device=state.energies.device),
        state.history, 0)]

    def on_generation(result: DEResult) -> bool:
        # The layers that searched in this generation measure their incumbents on its noise
        # (with noise-robust selection they are among its candidates; otherwise member 0 may
        # hold an older draw).
        searched = (~frozen[0]).nonzero().squeeze(1)
        before = progress_now[0]
        fun, remeasured = before.fun.clone(), before.remeasured
        if searched.numel():
            x_call, loss_call = latest_call
            measured, extra = incumbent_loss(problem, result.x[searched], calls[0] - 1,
                                             searched, x_call[searched], loss_call[searched])
            fun[searched] = measured.to(fun.dtype)
            remeasured += extra
        history = torch.cat([before.history, fun[:, None]], dim=1)
        progress_now[0] = _Progress(result.state, fun, history, remeasured)
        frozen[0] = result.converged.clone()
        saves.generation(result.nit, progress_now[0])
        info = IntermediateResult(result.nit, result.x, fun, history,
                                  int(result.nfev.sum()) + remeasured, result.converged)
        return notify(o.callback, progress, info)

    with PeriodicCheckpoint(checkpoint, _record, resumed) as saves:
        result = de_minimize(fn, maxiter=o.maxiter, callback=on_generation,
                             reevaluate_parents=o.noise_robust, state=state)
    final = progress_now[0]
    saves.finish(final)
    return SearchOutcome(
        x=result.x, fun=final.fun, nit=result.nit,
        nfev=int(result.nfev.sum()) + final.remeasured, converged=result.converged,
        stop_reason=result.stop_reason, message=result.message, history=final.history,
        extra={"de_result": result},
    )
