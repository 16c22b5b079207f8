"""Property-based tests (hypothesis): damaged files load correctly or are refused cleanly.

Random mutations of valid files -- byte flips, overwritten bytes, truncation, deleted and
inserted runs of bytes (biased towards the headers and the zip directories at the ends, where
the structure is), and for JSON documents deleted fields and values of another type -- fed to
the weight loaders (.npy, .npz, .pt, .safetensors, a nested training checkpoint, a sharded
checkpoint's index and shards), the results-file reader (its recipe fields aimed at too: each
layer's mapping, clip and layer-wise baseline, the run's mappings and clip range) and the
checkpoint reader; and random
nested checkpoints (dicts of tensors beside other values, several or none, with or without
``key``) and random indexes (shards outside the directory, missing, named twice) to the weight
loader. Each either loads (and what it loads is usable: a results file saves again) or raises
the library's clean error, a ValueError of one line naming the file; through the command line
the same file gives exit status 2 and one line. Never another exception, never a traceback,
never a changed input file.

Hypothesis runs derandomized (a fixed sequence of examples, the same on every machine and in
CI) with a bounded number of examples per test: see ``EXAMPLES``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from gpuwpo.cli import main
from gpuwpo.io import load_result, load_weights, result_to_json_bytes
from gpuwpo.network.settings import (
    mappings_from_settings,
    optimize_kwargs_from_settings,
    physics_from_settings,
)
from gpuwpo.search.checkpoint import read_checkpoint

#: Examples per test: 200 x 11 tests take about 30 s on this project's 2-core CPU. For a longer
#: hunt: GPUWPO_PROPERTY_EXAMPLES=5000 GPUWPO_PROPERTY_RANDOM=1 (random, not derandomized).
EXAMPLES = int(os.environ.get("GPUWPO_PROPERTY_EXAMPLES", 200))
PROPERTY = settings(max_examples=EXAMPLES,
                    derandomize=not os.environ.get("GPUWPO_PROPERTY_RANDOM"),
                    deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.slow  # ~20 s: CI runs it; the fast loop (-m "not slow") does not

#: test -> {"loaded": n, "refused": n}: what the examples did (printed with ``pytest -s``).
OUTCOMES: dict[str, dict[str, int]] = {}

TINY = ["--popsize", "2", "--maxiter", "2", "--test-size", "8", "4", "--baseline-iterations",
        "2", "--validation-repeats", "2", "--times", "1,1y"]


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"fc1.weight": torch.randn(4, 6, generator=gen),
            "fc1.bias": torch.randn(4, generator=gen, dtype=torch.float64),
            "fc2.weight": torch.randn(2, 4, generator=gen).to(torch.float16)}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """Valid files of every kind, as bytes."""
    d = tmp_path_factory.mktemp("originals")
    state = _state()
    np.save(d / "w.npy", state["fc1.weight"].numpy())
    np.savez(d / "w.npz", **{k: v.numpy() for k, v in state.items()})
    np.savez_compressed(d / "z.npz", **{k: v.numpy() for k, v in state.items()})
    torch.save(state, d / "w.pt")
    # A training script's checkpoint: the model's tensors under DataParallel's prefix, beside an
    # optimizer's state and plain values.
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer_state_dict": {"state": {0: {"exp_avg": torch.zeros(4, 6)}},
                                         "param_groups": [{"lr": 0.1, "params": [0]}]},
                "epoch": 3, "char2idx": {"a": 1}, "cer": 0.07}, d / "ckpt.pth")
    save_file(state, str(d / "w.safetensors"))
    small = {"fc1.weight": state["fc1.weight"].float()}
    torch.save(small, d / "small.pt")
    out, ckpt = d / "r.json", d / "run.ckpt"
    with contextlib.redirect_stdout(io.StringIO()):
        # Per-column strategies and baseline with a searched clip: the results file records a
        # mapping per layer, the layer-wise baseline's figures and the clip range.
        assert main(["optimize", str(d / "small.pt"), *TINY, "--quiet", "--out", str(out),
                     "--checkpoint", str(ckpt), "--mapping", "columnwise",
                     "--baseline-mapping", "columnwise", "--clip-range", "0.7,1"]) == 0
    names = ["w.npy", "w.npz", "z.npz", "w.pt", "w.safetensors", "r.json", "run.ckpt",
             "small.pt", "ckpt.pth"]
    return {name: (d / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mutated")


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------


@st.composite
def byte_mutations(draw, original: bytes) -> bytes:
    """1-4 edits of ``original``, positions biased towards its first and last 256 bytes."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        n = len(data)
        where = draw(st.sampled_from(["start", "end", "anywhere"]))
        if where == "start":
            i = draw(st.integers(0, min(n, 256) - 1))
        elif where == "end":
            i = draw(st.integers(max(0, n - 256), n - 1))
        else:
            i = draw(st.integers(0, n - 1))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "delete", "insert"]))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[i:]
        elif kind == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6)


def _places(doc, path=()):
    """Every (container path, key) in a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path, k
            yield from _places(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield path, i
            yield from _places(v, (*path, i))


@st.composite
def json_mutations(draw, document) -> bytes:
    """1-3 field deletions / type changes / duplications of a JSON document, as UTF-8 bytes."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        places = list(_places(doc))
        if not places:
            break
        path, key = draw(st.sampled_from(places))
        container = doc
        for step in path:
            container = container[step]
        action = draw(st.sampled_from(["delete", "replace", "replace", "swap type"]))
        if action == "delete":
            del container[key]
        elif action == "replace":
            container[key] = draw(JSON_VALUES)
        else:  # the same value in another JSON type
            value = container[key]
            container[key] = draw(st.sampled_from(
                [str(value), [value], {"value": value}, None, bool(value) if not isinstance(
                    value, (dict, list)) else 0]))
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _count(test: str, outcome: str) -> None:
    counts = OUTCOMES.setdefault(test, {"loaded": 0, "refused": 0})
    counts[outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for test, counts in OUTCOMES.items():
        print(f"\n{test}: {sum(counts.values())} examples, {counts['loaded']} loaded, "
              f"{counts['refused']} refused cleanly")


def _clean_error(err: BaseException, path: Path) -> None:
    assert isinstance(err, ValueError), f"{type(err).__name__}: {err}"
    message = str(err)
    assert str(path) in message, message
    assert "\n" not in message and "Traceback" not in message, message


def _one_line_exit_2(argv: list[str], path: Path) -> None:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    assert status == 2, (status, err.getvalue())
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuwpo: error: "), err.getvalue()


def _write(workdir: Path, name: str, data: bytes) -> Path:
    path = workdir / name
    path.write_bytes(data)
    return path


def _load_or_refuse(loader, path: Path, name: str):
    """What ``loader`` reads from ``path``, or None when it refuses the file with the clean
    error; the outcome is counted under ``name``."""
    try:
        loaded = loader(path)
    except Exception as err:  # noqa: BLE001 - the property: only the clean error
        _clean_error(err, path)
        _count(name, "refused")
        return None
    _count(name, "loaded")
    return loaded


#: optimize arguments that select no layer: nothing is searched, nothing written
NO_LAYER = ["--include", "^no such layer$"]


def _optimize_small_with(flag: str, path: Path, workdir: Path, originals) -> None:
    """``optimize small.pt FLAG PATH`` (--config, --resume) exits 2 with one line and leaves
    small.pt as it was."""
    weights = workdir / "small.pt"
    weights.write_bytes(originals["small.pt"])
    _one_line_exit_2(["optimize", str(weights), flag, str(path), *NO_LAYER], path)
    assert weights.read_bytes() == originals["small.pt"]


WEIGHT_FILES = ["w.npy", "w.npz", "z.npz", "w.pt", "w.safetensors", "ckpt.pth"]


@pytest.mark.parametrize("name", WEIGHT_FILES)
def test_damaged_weight_files_load_or_are_refused_cleanly(originals, workdir, name):
    @PROPERTY
    @given(data=byte_mutations(originals[name]))
    def check(data):
        path = _write(workdir, f"mutated-{name}", data)
        weights = _load_or_refuse(load_weights, path, name)
        if weights is not None:
            assert weights and all(isinstance(t, torch.Tensor) and not t.is_complex()
                                   and t.dtype != torch.bool for t in weights.values())
        assert path.read_bytes() == data, "the loader changed its input"
        # Through the command line: exit 2, one line, whether it loads (then nothing matches
        # the pattern) or not; nothing is searched, nothing written.
        _one_line_exit_2(["optimize", str(path), *NO_LAYER], path)
        assert path.read_bytes() == data

    check()


def test_damaged_results_files_load_or_are_refused_cleanly(originals, workdir):
    document = json.loads(originals["r.json"])

    @PROPERTY
    @given(data=st.one_of(json_mutations(document), byte_mutations(originals["r.json"])))
    def check(data):
        path = _write(workdir, "mutated.json", data)
        result = _load_or_refuse(load_result, path, "r.json")
        if result is not None:
            # What loads is usable: it summarises, its settings rebuild or are refused
            # cleanly, and it saves again (finite numbers only).
            assert result.summary()
            assert all(math.isfinite(layer.tnmse) for layer in result.layers)
            result_to_json_bytes(result)
            _read_settings(result, path, (physics_from_settings,
                                          optimize_kwargs_from_settings))
        _config_rerun_leaves_the_file(path, data, workdir, originals)

    check()



def _read_settings(result, path, readers) -> None:
    """Each reader rebuilds the result's settings or refuses them with a clean error."""
    for reader in readers:
        try:
            reader(result.settings, path=path)
        except Exception as err:  # noqa: BLE001
            _clean_error(err, path)


def _config_rerun_leaves_the_file(path, data, workdir, originals) -> None:
    """``optimize --config`` of the (mutated) file runs or refuses cleanly, never touching it."""
    assert path.read_bytes() == data
    _optimize_small_with("--config", path, workdir, originals)
    assert path.read_bytes() == data

#: The fields of a layer's recipe and of the run's mappings (where a mutation is aimed).
RECIPE_FIELDS = ("mapping", "layerwise_baseline_tnmse", "layerwise_baseline_ci95", "clip",
                 "baseline_mapping", "clip_range")


@st.composite
def recipe_mutations(draw, document) -> bytes:
    """1-3 deletions / replacements / type changes aimed at the recipe fields (each layer's
    mapping, clip and layer-wise figures; the options' mappings and clip range), or the version
    set to 1-3 (whose layers have no such fields), as UTF-8 bytes."""
    doc = copy.deepcopy(document)
    places = [(path, key) for path, key in _places(doc) if key in RECIPE_FIELDS]
    assert places, "the original results file records no recipe field"
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 5)) == 0:
            doc["version"] = draw(st.integers(1, 3))
            continue
        path, key = draw(st.sampled_from(places))
        container = doc
        for step in path:
            container = container[step]
        if key not in container:
            continue
        action = draw(st.sampled_from(["delete", "replace", "mapping", "pair"]))
        if action == "delete":
            del container[key]
        elif action == "replace":
            container[key] = draw(JSON_VALUES)
        elif action == "mapping":
            container[key] = draw(st.sampled_from(["layer", "columnwise", "per-row", "",
                                                   "Layer", 0]))
        else:
            container[key] = draw(st.lists(st.floats(-1.0, 2.0) | st.integers(-1, 2),
                                           max_size=3))
    return json.dumps(doc).encode()


def test_damaged_recipe_fields_load_or_are_refused_cleanly(originals, workdir):
    document = json.loads(originals["r.json"])

    @PROPERTY
    @given(data=recipe_mutations(document))
    def check(data):
        path = _write(workdir, "mutated-recipe.json", data)
        result = _load_or_refuse(load_result, path, "r.json recipes")
        if result is not None:
            # What loads holds valid recipes, and saves and loads again to the same result.
            assert all(layer.mapping in ("layer", "columnwise") for layer in result.layers)
            assert result.summary() and list(result.recipes()) == [
                layer.name for layer in result.layers]
            again = workdir / "again-recipe.json"
            again.write_bytes(result_to_json_bytes(result))
            assert load_result(again) == result
            _read_settings(result, path, (physics_from_settings,
                                          optimize_kwargs_from_settings,
                                          mappings_from_settings))
        _config_rerun_leaves_the_file(path, data, workdir, originals)

    check()


def test_damaged_checkpoints_load_or_are_refused_cleanly(originals, workdir):
    @PROPERTY
    @given(data=byte_mutations(originals["run.ckpt"]))
    def check(data):
        path = _write(workdir, "mutated.ckpt", data)
        checkpoint = _load_or_refuse(read_checkpoint, path, "run.ckpt")
        if checkpoint is not None:
            assert isinstance(checkpoint.fingerprint, dict) and checkpoint.stages
        assert path.read_bytes() == data
        _optimize_small_with("--resume", path, workdir, originals)
        assert path.read_bytes() == data

    check()


# --------------------------------------------------------------------------------------------
# Checkpoints as training scripts write them, and sharded checkpoints
# --------------------------------------------------------------------------------------------

#: Names a checkpoint's entries take: dicts a model could be in, layer names with and without
#: DataParallel's prefix, an optimizer's keys, plain values' keys, a dotted key.
CHECKPOINT_KEYS = st.sampled_from(
    ["model", "state_dict", "model_state_dict", "ema", "fc.weight", "module.fc.weight",
     "rnn.weight_ih_l0", "module.rnn.bias_ih_l0", "epoch", "state", "param_groups", "a.b"])


@st.composite
def checkpoint_tensors(draw) -> torch.Tensor:
    shape = draw(st.lists(st.integers(1, 3) | st.just(0), max_size=3))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int64,
                                  torch.bool, torch.complex64]))
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape).to(dtype)


#: A state_dict: names -> tensors (of any dtype and shape).
STATE_DICTS = st.dictionaries(CHECKPOINT_KEYS, checkpoint_tensors(), min_size=1, max_size=4)
CHECKPOINT_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
    | st.text(max_size=3) | checkpoint_tensors(),
    lambda inner: STATE_DICTS | st.dictionaries(CHECKPOINT_KEYS, inner, max_size=4)
    | st.lists(inner, max_size=2) | st.dictionaries(st.integers(0, 2), inner, max_size=2),
    max_leaves=12)


def _check_loaded(weights) -> None:
    """What loads is usable: named real tensors, and at most one note line."""
    assert weights and all(isinstance(n, str) for n in weights)
    assert all(isinstance(t, torch.Tensor) and not t.is_complex() and t.dtype != torch.bool
               for t in weights.values())
    assert weights.note is None or "\n" not in weights.note


def _keys(node, depth: int = 0):
    """Every string key in a nested checkpoint."""
    if isinstance(node, dict) and depth < 10:
        for k, v in node.items():
            if isinstance(k, str):
                yield k
            yield from _keys(v, depth + 1)


def test_nested_checkpoints_load_or_are_refused_cleanly(workdir):
    @PROPERTY
    @given(checkpoint=STATE_DICTS | st.dictionaries(CHECKPOINT_KEYS, CHECKPOINT_VALUES,
                                                    max_size=5),
           key=st.none() | CHECKPOINT_KEYS | st.just("model.fc.weight"))
    def check(checkpoint, key):
        path = workdir / "nested.pt"
        torch.save(checkpoint, path)
        data = path.read_bytes()
        weights = _load_or_refuse(lambda p: load_weights(p, key=key), path, "nested.pt")
        if weights is not None:
            _check_loaded(weights)
            # Every name is a key of the checkpoint, or one without a wrapper's prefix.
            keys = set(_keys(checkpoint))
            for n in weights:
                assert any(k == n or (k.endswith("." + n) and set(
                    k[:-len(n) - 1].split(".")) <= {"module", "_orig_mod"}) for k in keys), n
        argv = ["optimize", str(path), *NO_LAYER] + (["--key", key] if key else [])
        _one_line_exit_2(argv, path)
        assert path.read_bytes() == data

    check()


SHARD_A, SHARD_B = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """A directory with a two-shard checkpoint and its index, a file outside it that a link in
    it leads to, and files the index must not name (a config, another index)."""
    root = tmp_path_factory.mktemp("sharded")
    outside = root / "outside.safetensors"
    save_file({"secret.weight": torch.ones(2, 2)}, str(outside))
    d = root / "hf"
    d.mkdir()
    state = _state()
    save_file({"fc1.weight": state["fc1.weight"], "fc1.bias": state["fc1.bias"]},
              str(d / SHARD_A))
    save_file({"fc2.weight": state["fc2.weight"]}, str(d / SHARD_B))
    os.symlink(outside, d / "link.safetensors")
    (d / "config.json").write_text("{}")
    (d / INDEX).write_text(json.dumps(_INDEX_DOCUMENT))
    return d


_INDEX_DOCUMENT = {"metadata": {"total_size": 144},
                   "weight_map": {"fc1.weight": SHARD_A, "fc1.bias": SHARD_A,
                                  "fc2.weight": SHARD_B}}
#: Shard names an index may hold: its own shards, and names that leave the directory, are
#: missing, are not weights files or are the index itself.
SHARD_NAMES = st.sampled_from(
    [SHARD_A, SHARD_B, "../outside.safetensors", "link.safetensors", "/etc/passwd",
     f"sub/../{SHARD_A}", "missing.safetensors", "config.json", INDEX, "", "C:\\x.safetensors",
     SHARD_A.upper(), f"./{SHARD_B}"])


@st.composite
def index_mutations(draw) -> bytes:
    """An index with its weight_map edited (shards renamed, tensors added, removed, named
    twice), or its JSON damaged."""
    if draw(st.booleans()):
        return draw(json_mutations(_INDEX_DOCUMENT) | byte_mutations(
            json.dumps(_INDEX_DOCUMENT).encode()))
    weight_map = dict(_INDEX_DOCUMENT["weight_map"])
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*weight_map, "secret.weight", "fc3.weight"]))
        action = draw(st.sampled_from(["move", "move", "drop"]))
        if action == "drop":
            weight_map.pop(name, None)
        else:
            weight_map[name] = draw(SHARD_NAMES)
    text = json.dumps({"weight_map": weight_map})
    if draw(st.booleans()) and weight_map:  # a tensor named twice in the JSON text itself
        name = next(iter(weight_map))
        text = text[:-2] + f", {json.dumps(name)}: {json.dumps(draw(SHARD_NAMES))}}}}}"
    return text.encode()


def test_sharded_checkpoints_load_or_are_refused_cleanly(sharded, originals):
    shard_a = (sharded / SHARD_A).read_bytes()

    @PROPERTY
    @given(index=index_mutations(), shard=st.none() | byte_mutations(shard_a))
    def check(index, shard):
        path = sharded / INDEX
        path.write_bytes(index)
        (sharded / SHARD_A).write_bytes(shard_a if shard is None else shard)
        weights = _load_or_refuse(load_weights, path, INDEX)
        if weights is not None:
            _check_loaded(weights)
            # Only the shards' own tensors, never one from outside the directory.
            assert set(weights) <= set(_INDEX_DOCUMENT["weight_map"]), list(weights)
        _one_line_exit_2(["optimize", str(sharded), *NO_LAYER], path)
        assert path.read_bytes() == index
        assert (sharded / SHARD_A).read_bytes() == (shard_a if shard is None else shard)

    try:
        check()
    finally:
        (sharded / SHARD_A).write_bytes(shard_a)
