"""The torch differential-evolution backend: all layers in one tensor program.

Runs :func:`gpuwpo.de.de_minimize` on the problem's device with noise-robust selection (parents
re-evaluated with their trials under common random numbers) and saves its state as tensors plus
JSON (no pickle) for checkpoint and resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..de import DEResult, de_init, de_minimize, state_from_dict, state_to_dict
from ..options import SearchOptions, de_accepts
from .base import IntermediateResult, SearchOutcome, SearchProblem, notify

__all__ = ["search", "accepts", "save_checkpoint", "load_checkpoint"]

_STATE_FILE = "de_state.safetensors"
_META_FILE = "de_state.json"


def save_checkpoint(path: str | os.PathLike, state, extra: dict | None = None) -> None:
    """Save a :class:`gpuwpo.de.DEState` into the directory ``path`` (tensors + JSON)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, meta = state_to_dict(state)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": "gpuwpo-de-checkpoint", "version": 1, "meta": meta, "extra": extra or {}}
    tmp_t, tmp_m = path / (_STATE_FILE + ".tmp"), path / (_META_FILE + ".tmp")
    save_file(tensors, str(tmp_t))
    tmp_m.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_t, path / _STATE_FILE)
    os.replace(tmp_m, path / _META_FILE)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None):
    """Load a state saved by :func:`save_checkpoint`: returns (DEState, extra dict)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / _STATE_FILE).is_file() or not (path / _META_FILE).is_file():
        raise FileNotFoundError(f"no gpuwpo checkpoint in {path} (expected {_STATE_FILE} and "
                                f"{_META_FILE})")
    meta = json.loads((path / _META_FILE).read_text())
    if meta.get("format") != "gpuwpo-de-checkpoint":
        raise ValueError(f"{path / _META_FILE} is not a gpuwpo checkpoint")
    tensors = load_file(str(path / _STATE_FILE))
    return state_from_dict(tensors, meta["meta"], device=device), meta.get("extra", {})


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
) -> SearchOutcome:
    """Differential evolution in torch over all layers at once.

    The options' callback receives an :class:`IntermediateResult` after every generation and may
    stop the run by returning True or raising StopIteration. With ``checkpoint`` the state is
    saved every ``checkpoint_every`` generations and at the end; ``resume`` continues a saved
    state (the other search settings are taken from it). ``skip_converged`` evaluates only
    the layers still searching (converged layers are frozen, their energies unused); the result
    is identical either way because every layer's noise is keyed by its index.
    """
    o = options
    if o.resume is not None:
        state, _ = load_checkpoint(o.resume, device=problem.device)
        if tuple(state.population.shape[::2]) != (problem.num_layers, problem.dim):
            raise ValueError(f"checkpoint {o.resume} holds a search of shape "
                             f"{tuple(state.population.shape)}, not B={problem.num_layers}, "
                             f"D={problem.dim}")
    else:
        init = o.x_init
        if isinstance(init, torch.Tensor):
            init = init.to(device=problem.device, dtype=problem.dtype)
        x0 = None if o.x0 is None else torch.as_tensor(o.x0).to(device=problem.device,
                                                              dtype=problem.dtype)
        state = de_init(dim=problem.dim, num_layers=problem.num_layers, popsize=o.popsize,
                        init=init, x0=x0, strategy=o.strategy, mutation=o.mutation,
                        recombination=o.recombination, tol=o.tol, atol=o.atol, seed=o.seed,
                        device=problem.device, dtype=problem.dtype)

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

    def on_generation(result: DEResult) -> bool:
        frozen[0] = result.converged.clone()
        if o.checkpoint is not None and result.nit % o.checkpoint_every == 0:
            save_checkpoint(o.checkpoint, result.state)
        info = IntermediateResult(result.nit, result.x, result.fun, result.history,
                                  int(result.nfev.sum()), result.converged)
        return notify(o.callback, progress, info)

    result = de_minimize(fn, maxiter=o.maxiter, callback=on_generation,
                         reevaluate_parents=o.noise_robust, state=state)
    if o.checkpoint is not None:
        save_checkpoint(o.checkpoint, result.state)
    return SearchOutcome(
        x=result.x, fun=result.fun, nit=result.nit,
        nfev=int(result.nfev.sum()), converged=result.converged,
        stop_reason=result.stop_reason, message=result.message, history=result.history,
        extra={"de_result": result},
    )
