"""Randomness: one meaning of ``generator=None``, and noise streams keyed by what they are for.

Every public function of gpuwpo that draws random numbers takes ``generator``: a
``torch.Generator``, an int seed, or ``None``. ``None`` means the same everywhere: a fresh
generator seeded from the operating system's entropy (:func:`secrets.randbits`), so the result
is not reproducible; torch's global generator is never read nor advanced. Pass an int or a
generator for reproducible results. An int names a stream: two calls with the same int draw
the same numbers, so a function that draws several noises from its one ``generator`` argument
makes the generator once (:func:`make_generator`) and draws them all from it.

The random streams of a run are named (:data:`STREAMS`): the run seed and the role make the
stream's seed (:func:`stream_seed`), never ``seed + 1`` for a second role.

Seeds are used whole: an int seed of any size is reduced to 64 bits by a mixing hash, so seeds
that differ in any bit (e.g. by 2**32) give different streams.

Noise that must not depend on how work is chunked (over layers, candidates or repeats) comes from
:func:`keyed_generator`: one stream per (base seed, key, ...), e.g. (layer id, block of
candidates), derived by a 64-bit mixing function.
"""

from __future__ import annotations

import secrets

import torch

__all__ = ["make_generator", "draw_seed", "keyed_generator", "mix64", "STREAMS", "stream_seed",
           "stream_generator"]

_MASK64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A 64-bit hash of the integers ``values`` (splitmix64 steps), in [0, 2**64)."""
    state = 0x9E3779B97F4A7C15
    for v in values:
        v = int(v)
        # Fold an int of any size (negative too) into 64-bit words so no bit is dropped.
        words = [v & _MASK64]
        v >>= 64
        while v not in (0, -1):
            words.append(v & _MASK64)
            v >>= 64
        if v == -1:
            words.append(_MASK64)
        for w in words:
            state = (state + w + 0x9E3779B97F4A7C15) & _MASK64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            state = z ^ (z >> 31)
    return state


#: The named random streams of a run. Every random number a run draws comes from exactly one of
#: them: the stream of role ``name`` of the run seed ``s`` is keyed ``mix64(s, STREAMS[name], ...)``
#: (:func:`stream_seed`), so no two roles share numbers, whatever the seeds (``seed + 1`` and
#: ``seed + 2`` for two roles would give seed s's second role seed s + 1's first). The further
#: keys (a layer id, an evaluation number, a repeat) are part of the stream's name: a layer's
#: numbers do not depend on which other layers are computed beside it, so a network's layers can
#: be split over processes and give the single-process answer. The numbers are the table's
#: (fixed for good: changing one changes every result of that role).
STREAMS: dict[str, int] = {
    # the search (gpuwpo.search)
    "test_tiles": 1,       # the shuffle of each layer's resampled test weights, per layer
    "baseline": 2,         # the baseline converter's programmings (the loss's reference)
    "search_noise": 3,     # the objective's noise, per evaluation number of the search
    "start_ranking": 4,    # the one evaluation that ranks the standard starts
    "polish": 5,           # the frozen noise of the polish
    "validation": 6,       # the fresh noise of the never-worse choice
    "confirmation": 7,     # the independent noise block that confirms the choice's winner
    "search": 8,           # the search algorithm's own randomness (DE: init, mutation,
                           # crossover), per layer id
    # measuring a programmed network after the search (gpuwpo.example, gpuwpo.plots)
    "accuracy": 9,         # the programmings whose test accuracy is measured, per repeat
    "weight_errors": 10,   # the programmings of the weight-error figure
}


def stream_seed(seed: int, name: str, *key: int) -> int:
    """The 64-bit seed of stream ``name`` (a key of :data:`STREAMS`) of run seed ``seed``,
    further keyed by ``key`` (a layer id, an evaluation number, ...).

    Pass it wherever a ``generator`` is taken (an int is a seed, :func:`make_generator`), or
    make the generator with :func:`stream_generator`.

    Raises:
        ValueError: ``name`` is not a stream of :data:`STREAMS`.
    """
    if name not in STREAMS:
        raise ValueError(f"unknown random stream {name!r}; the streams are "
                         f"{', '.join(STREAMS)}")
    return mix64(seed, STREAMS[name], *key)


def stream_generator(seed: int, name: str, *key: int,
                     device: torch.device | str = "cpu") -> torch.Generator:
    """The generator (on ``device``) of stream ``name`` of run seed ``seed``, keyed by ``key``:
    seeded with :func:`stream_seed` as it is."""
    return _manual_seed(torch.device(device), stream_seed(seed, name, *key))


def _manual_seed(device: torch.device, seed: int) -> torch.Generator:
    # torch takes seeds in [0, 2**64); keep 63 bits so every backend's generator accepts it.
    return torch.Generator(device=device).manual_seed(seed & ((1 << 63) - 1))


def make_generator(generator: torch.Generator | int | None,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device``: the given one, one seeded from an int, or fresh.

    Args:
        generator: a generator (returned as it is; it must live on ``device``'s type), an int
            seed (any size, hashed to 64 bits), or None (seeded from OS entropy).
        device: where the random numbers are drawn.

    Raises:
        ValueError: a generator on another device type.
        TypeError: anything else.
    """
    device = torch.device(device)
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but the computation runs on {device}"
            )
        return generator
    if generator is None:
        return _manual_seed(device, secrets.randbits(64))
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got "
                        f"{type(generator).__name__}")
    return _manual_seed(device, mix64(generator))


def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator`` (advances it by one draw)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def keyed_generator(base_seed: int, *key: int,
                    device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of the stream ``(base_seed, *key)``: the same key, the same numbers."""
    return _manual_seed(torch.device(device), mix64(base_seed, *key))
