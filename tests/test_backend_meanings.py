"""``x``, ``fun``, ``history`` and the generation count mean the same in every backend
(gpuwpo.search.backends.base): tested on a noisy problem, with a best-ever lucky draw as the
negative control."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpuwpo.rng import stream_seed
from gpuwpo.search.backends import run_search
from gpuwpo.search.backends.base import SearchProblem

# one optimum per layer, away from the cube's centre and from each other
CENTRES = torch.tensor([[0.3, 0.7, 0.2, 0.9], [0.6, 0.1, 0.5, 0.4], [0.8, 0.3, 0.9, 0.1]],
                       dtype=torch.float64)
B, D = CENTRES.shape
#: The noise's standard deviation: larger than the bowl's whole range inside the cube, so that
#: a minimum over draws is dominated by luck.
SIGMA = 1.0
MAXITER = 20
COMMON = dict(popsize=3, maxiter=MAXITER, seed=5)
#: The DE's settings under which no layer converges (scipy's test then needs std(E) <= 0);
#: CMA-ES, SNES and the GA have no convergence test.
NO_CONVERGENCE = dict(tol=0.0, atol=0.0)

BACKENDS = [
    ("torch", NO_CONVERGENCE),
    ("torch", {**NO_CONVERGENCE, "noise_robust": False}),
    ("scipy", NO_CONVERGENCE),
    ("evotorch", {**NO_CONVERGENCE, "algorithm": "de"}),
    ("evotorch", {**NO_CONVERGENCE, "algorithm": "de", "noise_robust": False}),
    ("evotorch", {"algorithm": "cmaes"}),
    ("evotorch", {"algorithm": "snes"}),
    ("evotorch", {"algorithm": "ga"}),
    ("evotorch", {"algorithm": "ga", "noise_robust": False}),
]


def _bowl(x: torch.Tensor, layers) -> torch.Tensor:
    return ((x - CENTRES[layers][:, None]) ** 2).sum(-1)


def _draw(call: int, layer: int) -> float:
    """The noise of evaluation ``call`` of layer ``layer``: one standard normal, common to all
    the call's candidates of that layer (as the objective's common random numbers)."""
    g = torch.Generator().manual_seed(int(stream_seed(17, "search_noise", call, layer) >> 1))
    return float(torch.randn((), generator=g, dtype=torch.float64))


class NoisyBowl:
    """A shifted sphere per layer plus SIGMA times a draw per (call, layer); records the latest
    call number each layer was evaluated with."""

    def __init__(self) -> None:
        self.latest: dict[int, int] = {}

    def __call__(self, x: torch.Tensor, call: int, layers: torch.Tensor | None = None):
        rows = list(range(B)) if layers is None else [int(i) for i in layers]
        noise = torch.tensor([_draw(call, b) for b in rows], dtype=torch.float64)
        for b in rows:
            self.latest[b] = call
        return _bowl(x.double(), rows) + SIGMA * noise[:, None]

    def problem(self) -> SearchProblem:
        return SearchProblem(self, B, D, torch.device("cpu"), dtype=torch.float64,
                             supports_layers=True)


def _run(backend: str, extra: dict):
    """A run with a callback that records, after every generation, what it saw and the latest
    call number of every layer."""
    if backend == "evotorch":
        pytest.importorskip("evotorch")
    bowl = NoisyBowl()
    seen = []

    def callback(info):
        seen.append((info, dict(bowl.latest)))

    out = run_search(backend, bowl.problem(), callback=callback, **COMMON, **extra)
    return out, seen


def _residuals(records) -> tuple[torch.Tensor, torch.Tensor]:
    """Per generation and layer: (fun - bowl(x)) / SIGMA, and the draw of the layer's latest
    evaluation. The definition of ``fun`` says the two are equal."""
    got, latest = [], []
    for info, calls in records:
        got.append((info.fun.double() - _bowl(info.x.double()[:, None], list(range(B)))[:, 0])
                   / SIGMA)
        latest.append(torch.tensor([_draw(calls[b], b) for b in range(B)], dtype=torch.float64))
    return torch.stack(got), torch.stack(latest)


def _fun_follows_the_definition(records) -> bool:
    """Whether every ``fun`` is its incumbent's loss on its layer's latest noise, and (a
    statistical consequence that a lucky draw fails) the residual noise averages to zero
    within 4 standard errors."""
    got, latest = _residuals(records)
    exact = bool(torch.allclose(got, latest, rtol=0, atol=1e-9))
    unbiased = abs(float(got.mean())) <= 4.0 / math.sqrt(got.numel())
    return exact and unbiased


def _best_ever(records):
    """The same run reported as a best-ever lucky draw: each layer's lowest fun so far and its
    point (what the EvoTorch backend reported before)."""
    out = []
    best_f = torch.full((B,), math.inf, dtype=torch.float64)
    best_x = torch.zeros(B, D, dtype=torch.float64)
    for info, calls in records:
        better = info.fun.double() < best_f
        best_f = torch.where(better, info.fun.double(), best_f)
        best_x = torch.where(better[:, None], info.x.double(), best_x)
        out.append((info.__class__(info.generation, best_x.clone(), best_f.clone(),
                                   info.history, info.nfev, info.converged), calls))
    return out


@pytest.mark.parametrize("backend, extra", BACKENDS)
def test_every_backend_reports_the_incumbents_latest_draw_and_counts_generations_alike(
        backend, extra):
    out, records = _run(backend, extra)
    # The generation count: one callback per generation, 1, 2, ..., maxiter for a run of
    # several layers that does not converge, whichever backend.
    assert [info.generation for info, _ in records] == list(range(1, MAXITER + 1))
    assert out.nit == MAXITER and out.stop_reason == "maxiter"
    assert not bool(out.converged.any())
    # fun: the incumbent's loss on the noise of its layer's latest evaluation.
    assert _fun_follows_the_definition(records)
    # history: fun after each generation, as the callback saw it; the outcome is the last one.
    last = records[-1][0]
    assert out.history.shape == (B, MAXITER)
    torch.testing.assert_close(out.history.double(),
                               torch.stack([info.fun.double() for info, _ in records], 1))
    assert torch.equal(out.x, last.x) and torch.equal(out.fun, last.fun)
    assert out.nfev == last.nfev


def test_negative_control_a_best_ever_lucky_draw_fails_the_definition():
    _, records = _run("torch", NO_CONVERGENCE)
    assert _fun_follows_the_definition(records)
    lucky = _best_ever(records)
    assert not _fun_follows_the_definition(lucky)
    # Not only the exact check: the lucky draws are far below zero on average.
    got, _ = _residuals(lucky)
    assert float(got.mean()) < -4.0 / math.sqrt(got.numel())


# ----------------------------------------------------------------------------------------------
# one search, whichever backend drives it


def _plain_problem(centres: torch.Tensor, layer_ids=None) -> SearchProblem:
    def loss(x, call, layers=None):
        rows = centres if layers is None else centres[layers]
        return ((x.double() - rows[:, None]) ** 2).sum(-1)

    return SearchProblem(loss, centres.shape[0], centres.shape[1], torch.device("cpu"),
                         dtype=torch.float64, supports_layers=True,
                         layer_ids=None if layer_ids is None else tuple(layer_ids))


def test_the_scipy_backend_is_scipys_differential_evolution_for_each_layer():
    from scipy.optimize import differential_evolution

    settings = dict(popsize=5, maxiter=12, tol=0.01, atol=0.0, mutation=(0.5, 1.0),
                    recombination=0.7)
    out = run_search("scipy", _plain_problem(CENTRES), seed=9, **settings)
    for b in range(B):
        def one(x, b=b):
            return ((x.T - CENTRES[b].numpy()) ** 2).sum(-1)

        res = differential_evolution(
            one, [(0.0, 1.0)] * D, rng=np.random.default_rng(stream_seed(9, "search", b)),
            polish=False, vectorized=True, updating="deferred", **settings)
        assert np.array_equal(out.x[b].numpy(), res.x) and float(out.fun[b]) == res.fun
        assert bool(out.converged[b]) == (res.nit < settings["maxiter"])
    assert out.nit == max(int(h.isfinite().sum()) for h in out.history)


@pytest.mark.parametrize("backend", ["scipy", "evotorch"])
def test_a_layer_searched_alone_is_the_layer_searched_beside_others(backend):
    # Each layer's randomness is the stream "search" keyed by its id, and it numbers its own
    # loss calls: a search of layer 2 alone (id 2) is layer 2 of the search of all three.
    if backend == "evotorch":
        pytest.importorskip("evotorch")
    settings = dict(popsize=3, maxiter=6, seed=4)
    both = run_search(backend, _plain_problem(CENTRES), **settings)
    alone = run_search(backend, _plain_problem(CENTRES[2:], layer_ids=[2]), **settings)
    assert torch.equal(both.x[2:], alone.x) and torch.equal(both.history[2:], alone.history)
    other_id = run_search(backend, _plain_problem(CENTRES[2:], layer_ids=[0]), **settings)
    assert not torch.equal(other_id.x, alone.x)


def test_the_evotorch_de_is_the_torch_de():
    # Both draw every layer's randomness from the same stream and follow the same engine, so on
    # a noiseless problem they are the same search, bit for bit.
    pytest.importorskip("evotorch")
    settings = dict(popsize=4, maxiter=15, seed=8, mutation=(0.5, 1.0), recombination=0.7,
                    atol=0.0, tol=0.0)
    torch_out = run_search("torch", _plain_problem(CENTRES), **settings)
    evo_out = run_search("evotorch", _plain_problem(CENTRES), algorithm="de", **settings)
    assert torch.equal(torch_out.x, evo_out.x) and torch.equal(torch_out.fun, evo_out.fun)
    assert torch.equal(torch_out.history, evo_out.history)
    assert torch_out.nit == evo_out.nit and torch_out.nfev == evo_out.nfev
