"""WeightProgrammingOptimizer: arguments, the three backends, success, checkpoint/resume."""

from __future__ import annotations

import math

import pytest
import torch

import gpuwpo
from gpuwpo.search.backends.base import SearchOutcome
from gpuwpo.search.backends.torch_backend import load_checkpoint
from gpuwpo.search.de import de_init
from gpuwpo.search.optimizer import OptimizationResult

T_STEPS = [1.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0]
# A small test tile and budget: the suite runs on 2 CPU cores.
SMALL = dict(test_in_features=128, test_out_features=20, baseline_iterations=16,
             validation_repeats=16, disp=False, device="cpu")


@pytest.fixture(scope="module")
def heavy_tailed():
    """Student-t (3 degrees of freedom) weights: the heavy tails of trained networks."""
    return gpuwpo.student_t_weights((96, 128), generator=torch.Generator().manual_seed(3))


def _baseline():
    return gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


def _optimizer(weights, f_lst=(None, None), backend="torch", **kwargs):
    return gpuwpo.WeightProgrammingOptimizer(
        weights, list(f_lst), gpuwpo.PCMLikeNoiseModel(), T_STEPS, _baseline(), backend=backend,
        **{**SMALL, **kwargs})


class _Stop(Exception):
    """Raised by a spy once it has seen what it came for."""


def test_defaults_are_the_measured_ones(heavy_tailed, monkeypatch):
    """docs/RESULTS.md "Defaults", as the search and the choice receive them: the reference's
    operators, a 5 x D population started from the standard converters, for 50 generations of
    noise-robust selection, the 12.5 % margin in the loss, the choice on 100 programmings, one
    fixed seed."""
    import gpuwpo.search.backends.torch_backend as tb
    import gpuwpo.search.optimizer as optimizer_module

    seen = []

    def spy_minimize(fn, *, maxiter, callback, reevaluate_parents, state):
        seen.append(dict(fn=fn, maxiter=maxiter, robust=reevaluate_parents, state=state))
        raise _Stop

    monkeypatch.setattr(tb, "de_minimize", spy_minimize)
    defaults = dict(test_in_features=128, test_out_features=20, baseline_iterations=16,
                    disp=False, device="cpu")  # SMALL but for the choice's repeats
    runs = [gpuwpo.WeightProgrammingOptimizer(heavy_tailed, [None, None],
                                              gpuwpo.PCMLikeNoiseModel(), T_STEPS, _baseline(),
                                              **defaults) for _ in range(2)]
    for opt in runs:
        with pytest.raises(_Stop):
            opt.run_optimizer()
    opt, search = runs[0], seen[0]
    # D = n (2K - 1) + free f + x_kw = 6 * 3 + 2 + 1: nbins 6, two free factors.
    D = 21
    assert opt.space.dim == D and opt.generate_bounds() == [(0.0, 1.0)] * D
    assert opt.device == torch.device("cpu")
    state = search["state"]
    assert state.population.shape == (1, 5 * D, D)  # popsize 5
    starts, _ = opt.standard_starts()
    assert len(starts) == 18
    first = state.population[0, : len(starts)]  # the standard starts, best ranked first
    assert all(bool((first == x.to(first)).all(-1).any()) for x in starts)
    assert search["maxiter"] == 50 and search["robust"]
    assert (state.strategy, state.mutation_low, state.mutation_high, state.dither) == \
        ("best1bin", 0.1, 0.1, False)
    assert state.recombination == 0.3 and (state.tol, state.atol) == (0.0, 0.02)
    # One fixed default seed: two default runs start from the same population.
    assert torch.equal(state.population, seen[1]["state"].population)
    # The loss is (TNMSE - baseline) / baseline + margin: the baseline's own program scores
    # the margin, up to one programming's noise.
    base = [i for i, x in enumerate(state.population[0]) if torch.equal(x, starts[0].to(x))]
    loss = search["fn"](state.population)[0, base[0]]
    assert abs(float(loss) - 0.125) < 0.05

    # The choice: every contender programmed 100 times in each block, on the run seed's streams.
    chosen = {}

    def spy_choose(objective, contenders, baseline, *, repeats, seed, references=None):
        chosen.update(repeats=repeats, seed=seed, labels=[c for c, _ in contenders[0]],
                      baseline=baseline, references=references, mapping=objective.mapping)
        raise _Stop

    def start_point(backend, problem, options, **kwargs):  # the search "ends" at its start
        x = options.x0[:, 0]
        return SearchOutcome(x=x, fun=torch.zeros(1), nit=1, nfev=1,
                             converged=torch.ones(1, dtype=torch.bool), stop_reason="converged",
                             message="", history=torch.zeros(1, 1))

    monkeypatch.setattr(optimizer_module, "run_search", start_point)
    monkeypatch.setattr(optimizer_module, "choose_per_layer", spy_choose)
    monkeypatch.setattr(opt, "_polish", lambda x: x + 0.01 * (0.5 - x))  # (the polish is on)
    with pytest.raises(_Stop):
        opt.run_optimizer()
    assert chosen["repeats"] == 100 and "polish" in chosen["labels"]
    # The mapping users deploy (aihwkit's inference presets), for the strategies and the
    # baseline; the layer-wise baseline measured beside every answer, for the report; the
    # standard converters compete under both mappings.
    assert chosen["mapping"] == "columnwise" and chosen["baseline"].mapping == "columnwise"
    assert chosen["baseline"].converter is opt.g_converter_baseline
    (label, reference), = chosen["references"].items()
    assert label == "layer-wise baseline" and reference.mapping == "layer"
    assert "baseline converter, layer" in chosen["labels"]
    assert any(c.startswith("start: ") and c.endswith(", layer") for c in chosen["labels"])
    # ... and the seed of the choice's streams is the one the search drew its population from.
    again = de_init(dim=D, num_layers=1, popsize=5, seed=chosen["seed"],
                    dtype=state.population.dtype)
    assert torch.equal(again.rng_state, state.rng_state)


def test_unknown_keyword_is_named(heavy_tailed):
    with pytest.raises(TypeError, match="popsise"):
        _optimizer(heavy_tailed, popsise=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strategy="best3bin"), "best3bin"),
        (dict(popsize=0), "popsize"),
        (dict(mutation=2.5), "mutation"),
        (dict(mutation=(0.9, 0.5)), "mutation"),
        (dict(recombination=1.5), "recombination"),
        (dict(maxiter=0), "maxiter"),
        (dict(g_err=1.5), "g_err"),
    ],
)
def test_bad_arguments(heavy_tailed, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _optimizer(heavy_tailed, **kwargs)


def test_bad_backend_weights_and_times(heavy_tailed):
    with pytest.raises(ValueError, match="backend"):
        _optimizer(heavy_tailed, backend="jax")
    bad = heavy_tailed.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _optimizer(bad)
    with pytest.raises(ValueError, match="t_steps"):
        gpuwpo.WeightProgrammingOptimizer(heavy_tailed, [None, None], gpuwpo.PCMLikeNoiseModel(),
                                          [], _baseline(), **SMALL)


def test_baseline_is_evaluated_once_with_uncertainty(heavy_tailed):
    opt = _optimizer(heavy_tailed)
    mean, sem = opt.get_loss_baseline()
    assert mean.shape == (1,) and sem.shape == (1,)
    assert 0 < float(sem) < 0.05 * float(mean)
    assert opt.get_loss_baseline()[0] is mean  # cached: the same figure for the whole run


@pytest.mark.slow
def test_torch_backend_beats_the_dualpair_baseline(heavy_tailed):
    """The issue's acceptance test: success with the default loss_margin on a small budget."""
    opt = _optimizer(heavy_tailed, popsize=4, maxiter=40, mutation=(0.5, 1.0), recombination=0.7)
    converter, success = opt.run_optimizer()
    r = opt.result
    assert isinstance(success, bool) and success
    assert isinstance(converter, gpuwpo.CustomPairConductanceConverter)
    assert bool(converter.check_invertibility().all())
    # The validated figure (fresh noise) beats the baseline by the margin, and the interval
    # does not reach the margin line.
    assert float(r.tnmse[0]) < (1 - 0.125) * float(r.baseline_tnmse[0])
    assert float(r.tnmse_ci95[0, 1]) < float(r.baseline_ci95[0, 0])
    assert r.nfev > 0 and r.nit >= 1 and r.wall_time > 0
    assert r.history.shape == (1, r.nit)
    # Best-so-far in a noisy search is optimistic; the validated figure is reported beside it.
    assert math.isfinite(float(r.search_best_tnmse[0]))
    assert r.stop_reason in ("converged", "maxiter")
    assert "baseline" in r.summary()


class _Spy:
    """Records the shape of every population the search evaluates, delegates the rest."""

    def __init__(self, inner):
        self.inner, self.shapes = inner, []

    def __call__(self, x, *args, **kwargs):
        self.shapes.append(tuple(x.shape))
        return self.inner(x, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_layers_are_one_batched_search():
    gen = torch.Generator().manual_seed(5)
    layers = [gpuwpo.student_t_weights((64, 40), generator=gen),
              gpuwpo.student_t_weights((32, 100), generator=gen, scale=0.2)]
    opt = _optimizer(layers, popsize=2, maxiter=3, polish=False)
    opt.objective = spy = _Spy(opt.objective)
    converter, _ = opt.run_optimizer()
    assert spy.shapes and all(shape[0] == 2 for shape in spy.shapes)  # both layers, every call
    assert isinstance(converter, list) and len(converter) == 2
    assert all(c.batch_shape == () for c in converter)
    assert opt.result.tnmse.shape == (2,) and opt.result.layer_success.shape == (2,)


def test_x0_warm_start_is_in_the_initial_population(heavy_tailed, monkeypatch):
    import gpuwpo.search.backends.torch_backend as tb

    x0 = torch.full((21,), 0.37)
    made = []

    def spy_init(**kwargs):
        state = original(**kwargs)
        made.append(state)
        return state

    original = tb.de_init
    monkeypatch.setattr(tb, "de_init", spy_init)
    opt = _optimizer(heavy_tailed, popsize=2, maxiter=1, x0=x0, polish=False)
    opt.run_optimizer()
    assert len(made) == 1
    assert torch.equal(made[0].population[0, 0], x0)
    with pytest.raises(ValueError, match="x0"):
        _optimizer(heavy_tailed, popsize=2, maxiter=1, x0=torch.full((21,), 1.5)).run_optimizer()


def test_callback_stops_the_run(heavy_tailed):
    opt = _optimizer(heavy_tailed, popsize=2, maxiter=10, polish=False,
                     callback=lambda result: result.generation >= 2)
    opt.run_optimizer()
    assert opt.result.stop_reason == "callback" and opt.result.nit == 2


@pytest.mark.parametrize("backend", ["scipy", "evotorch"])
def test_other_backends_return_the_same_result_type(heavy_tailed, backend):
    if backend == "evotorch":
        pytest.importorskip("evotorch")
    opt = _optimizer(heavy_tailed, backend=backend, popsize=2, maxiter=3, polish=False)
    converter, success = opt.run_optimizer()
    assert isinstance(success, bool)
    assert isinstance(converter, gpuwpo.CustomPairConductanceConverter)
    r = opt.result
    assert isinstance(r, OptimizationResult) and r.backend == backend
    # The answer's point, or NaN where the answer is a standard converter the space cannot
    # express exactly (offered to the choice as itself); the search's own point always.
    assert r.x.shape == (1, 21) and bool(((r.x >= 0) & (r.x <= 1) | r.x.isnan()).all())
    assert bool(r.x.isnan().all()) == r.chosen[0].startswith(("standard: ", "baseline"))
    assert r.search_x.shape == (1, 21) and bool(((r.search_x >= 0) & (r.search_x <= 1)).all())
    assert r.tnmse.shape == (1,) and r.nfev > 0
    # The generation count and the history mean what the torch backend's do.
    assert 1 <= r.nit <= 3 and r.history.shape == (1, r.nit)
    torch.testing.assert_close(r.history[:, -1], r.search_best_tnmse.to(r.history))


def test_checkpoint_resume_is_identical_to_an_uninterrupted_run(heavy_tailed, tmp_path):
    common = dict(popsize=2, maxiter=8, polish=False, mutation=(0.5, 1.0), recombination=0.7,
                  test_in_features=32, test_out_features=8)  # the API's checkpoint, cheaply
    full = _optimizer(heavy_tailed, **common)
    full.run_optimizer()

    def stop_at_3(result):
        return result.generation >= 3

    ckpt = tmp_path / "ckpt"
    first = _optimizer(heavy_tailed, checkpoint=str(ckpt), checkpoint_every=1,
                       callback=stop_at_3, **common)
    first.run_optimizer()
    assert first.result.stop_reason == "callback" and first.result.nit == 3
    state, _ = load_checkpoint(ckpt)
    assert state.nit == 3

    resumed = _optimizer(heavy_tailed, resume=str(ckpt), **common)
    resumed.run_optimizer()
    a, b = full.result, resumed.result
    assert a.nit == b.nit and a.chosen == b.chosen
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(a.search_x, b.search_x)
    assert torch.equal(a.history, b.history)
    assert torch.equal(a.tnmse, b.tnmse)
    assert a.nfev == b.nfev


def test_checkpoint_is_one_safetensors_file_without_pickle(heavy_tailed, tmp_path):
    from safetensors import safe_open

    ckpt = tmp_path / "run.ckpt"
    opt = _optimizer(heavy_tailed, popsize=2, maxiter=2, polish=False, checkpoint=str(ckpt))
    opt.run_optimizer()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]  # no temporary left
    with safe_open(str(ckpt), "pt") as fh:  # a plain safetensors file: tensors and JSON
        assert "search/population" in fh.keys() and "gpuwpo_checkpoint" in fh.metadata()
    state, checkpoint = load_checkpoint(ckpt)
    assert state.nit == 2 and checkpoint.fingerprint["seed"] == 100
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nowhere")


def test_the_polish_is_a_contender_of_the_choice(heavy_tailed):
    opt = _optimizer(heavy_tailed, popsize=2, maxiter=3, polish=True, polish_maxiter=3)
    opt.run_optimizer()
    r = opt.result
    unpolished = _optimizer(heavy_tailed, popsize=2, maxiter=3, polish=False)
    unpolished.run_optimizer()
    # Same seed, same search; the polish only adds a contender measured on the same noise.
    assert torch.equal(r.history, unpolished.result.history)
    moved = not torch.equal(r.extra["polished_x"], r.search_x)
    assert ("polish" in r.choices[0].figures) == moved  # a point equal to another is one
    assert "polish" not in unpolished.result.choices[0].figures
    assert bool(r.polished[0]) == (r.chosen[0] == "polish")
    assert float(r.tnmse[0]) <= float(unpolished.result.tnmse[0]) or r.chosen[0] == "baseline"


def test_the_standard_starts_are_first_in_the_population(heavy_tailed, monkeypatch):
    """The baseline's own program and the N-pair grid start the search, best ranked first."""
    import gpuwpo.search.backends.torch_backend as tb

    opt = _optimizer(heavy_tailed, popsize=2, maxiter=1, polish=False)
    starts, labels = opt.standard_starts()
    assert labels[0] == "baseline program"
    torch.testing.assert_close(starts[0].double(), opt.space.encode_npair([1.0, 1.0]))
    assert len(labels) == len(set(labels)) == starts.shape[0] == 18  # F grid x range grid
    made = []
    original = tb.de_init

    def spy_init(**kwargs):
        state = original(**kwargs)
        made.append(state)
        return state

    monkeypatch.setattr(tb, "de_init", spy_init)
    opt.run_optimizer()
    population = made[0].population[0]
    assert population.shape[0] == 42
    for x in starts:  # every standard start is a member (ranked order)
        assert bool((population == x.to(population)).all(-1).any())
    started_nfev = opt.result.nfev
    # The best standard start is a contender of the choice (unless the search's best is that
    # very point).
    search_is_a_start = bool((starts.to(opt.result.search_x) == opt.result.search_x[0])
                             .all(-1).any())
    assert search_is_a_start or any(label.startswith("start: ")
                                    for label in opt.result.choices[0].figures)
    # Without standard starts the population is the plain latin hypercube.
    plain = _optimizer(heavy_tailed, popsize=2, maxiter=1, polish=False, standard_starts=False)
    assert plain.standard_starts()[1] == []
    plain.run_optimizer()
    # Their ranking: one evaluation each, under each mapping (the best under each competes).
    assert opt.contender_mappings == ("columnwise", "layer")
    assert started_nfev == plain.result.nfev + 18 * 2
    assert not any(bool((made[-1].population[0] == x.to(population)).all(-1).any())
                   for x in starts)


def test_no_baseline_point_for_converters_the_space_cannot_express(heavy_tailed):
    opt = gpuwpo.WeightProgrammingOptimizer(
        heavy_tailed, [None, None, None], gpuwpo.PCMLikeNoiseModel(), T_STEPS, _baseline(),
        **SMALL)
    assert opt.baseline_point() is None  # three pairs against a two-pair baseline
    single = gpuwpo.WeightProgrammingOptimizer(
        heavy_tailed, [None], gpuwpo.PCMLikeNoiseModel(), T_STEPS,
        gpuwpo.SinglePairConductanceConverter(0.0, 25.0), **SMALL)
    assert single.baseline_point() is not None


@pytest.mark.slow
def test_skipping_converged_layers_changes_nothing_but_the_work(heavy_tailed, monkeypatch):
    """Converged layers are frozen; not evaluating them gives exactly the same search."""
    import gpuwpo.search.backends.torch_backend as tb

    gen = torch.Generator().manual_seed(11)
    layers = [heavy_tailed, gpuwpo.student_t_weights((64, 64), generator=gen),
              gpuwpo.student_t_weights((80, 50), generator=gen, scale=0.3)]
    # A loose tolerance so that layers converge, at different generations, within the budget.
    common = dict(popsize=2, maxiter=12, polish=False, atol=2.0, mutation=(0.5, 1.0),
                  recombination=0.7)
    runs = {}
    for skip in (True, False):
        original = tb.search
        monkeypatch.setattr(tb, "search",
                            lambda problem, options, _o=original, _s=skip, **kw: _o(
                                problem, options, skip_converged=_s, **kw))
        opt = _optimizer(layers, **common)
        opt.objective = spy = _Spy(opt.objective)
        opt.run_optimizer()
        runs[skip] = (opt.result, sum(s[0] * s[1] for s in spy.shapes))
        monkeypatch.setattr(tb, "search", original)
    (a, work_a), (b, work_b) = runs[True], runs[False]
    converged = a.extra["outcome"].converged
    assert bool(converged.any()) and a.nit > 1
    # x is NaN for a layer whose answer is no point of the space (a standard converter).
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0, equal_nan=True)
    assert a.chosen == b.chosen and torch.equal(a.search_x, b.search_x)
    assert torch.equal(a.history, b.history) and torch.equal(a.tnmse, b.tnmse)
    assert work_a < work_b  # fewer layer-candidates evaluated
