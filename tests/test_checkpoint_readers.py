"""Checkpoints as training scripts write them (gpuwpo/io/weights.py, find_state_dict): nested
dicts beside other entries, DataParallel prefixes, Lightning checkpoints, Hugging Face's
pytorch_model.bin and sharded safetensors with an index, directories; what is left out named in
one note line; ambiguous or damaged input refused in one line (exit 2, nothing written); and the
names in a results file are the model's own."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import gpuwpo
from gpuwpo.cli import main
from gpuwpo.io import LoadedWeights, load_result, load_weights
from tests._cli import TINY
from tests.test_layers import CRNN_LAYERS, crnn


def _state() -> dict[str, torch.Tensor]:
    return dict(crnn().state_dict())


def _same(loaded, expected) -> None:
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def _refused(argv: list[str], *fragments: str) -> None:
    """The command exits 2 with one line ``gpuwpo: error: ...`` holding every fragment."""
    status, out, err = _run(argv)
    assert status == 2, (status, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuwpo: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- nested checkpoints ----------------------------------------------------------------------


def test_the_issues_checkpoint_is_read_with_a_note_naming_what_was_left_out(tmp_path):
    state = _state()
    path = tmp_path / "crnn.pth"
    torch.save({"model_state_dict": state, "char2idx": {"a": 1, "b": 2}, "epoch": 12,
                "cer": 0.07}, path)
    loaded = load_weights(path)
    assert isinstance(loaded, LoadedWeights) and isinstance(loaded, dict)
    _same(loaded, state)
    assert loaded.source == path
    assert loaded.note == (f"{path}: read the tensors of 'model_state_dict'; ignored 3 entries "
                           f"that are not weights: char2idx (dict), epoch (int), cer (float)")
    # A plain state_dict has nothing to note.
    torch.save(state, tmp_path / "plain.pt")
    plain = load_weights(tmp_path / "plain.pt")
    _same(plain, state)
    assert plain.note is None


def _adam_state(model: torch.nn.Module) -> dict:
    """What ``torch.optim.Adam(model.parameters()).state_dict()`` holds after a step: moments
    of the parameters' shapes, keyed by the parameters' indices (written out: a real step
    would import torch's compiler, a second of a fast test)."""
    params = list(model.parameters())
    return {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                          "exp_avg_sq": torch.zeros_like(p)} for i, p in enumerate(params)},
            "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8,
                              "weight_decay": 0, "amsgrad": False,
                              "params": list(range(len(params)))}]}


def test_an_optimizers_state_beside_the_model_is_never_the_model(tmp_path):
    model = crnn()
    path = tmp_path / "train.pt"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": _adam_state(model), "loss": torch.tensor(0.5)},
               path)
    loaded = load_weights(path)
    _same(loaded, dict(model.state_dict()))
    assert "optimizer_state_dict (optimizer state)" in loaded.note
    assert "loss (float32 tensor)" in loaded.note


@pytest.mark.parametrize("prefix, wrapper", [("module.", "DataParallel"),
                                             ("_orig_mod.", "torch.compile"),
                                             ("module._orig_mod.", "DataParallel")])
def test_wrapper_prefixes_are_removed_so_the_names_are_the_models(tmp_path, prefix, wrapper):
    state = _state()
    path = tmp_path / "dp.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}, "arch": "crnn"}, path)
    loaded = load_weights(path)
    _same(loaded, state)
    assert f"removed the prefix {prefix!r}" in loaded.note and wrapper in loaded.note
    # Only where every name carries it: one model's own 'module.' stays.
    mixed = {"module.a.weight": torch.ones(2, 2), "b.weight": torch.ones(2, 2)}
    torch.save(mixed, tmp_path / "mixed.pt")
    assert list(load_weights(tmp_path / "mixed.pt")) == list(mixed)


def test_a_lightning_checkpoint_is_read_as_its_state_dict(tmp_path):
    model = crnn()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}  # the LightningModule's
    checkpoint = {
        "epoch": 4, "global_step": 1000, "pytorch-lightning_version": "2.2.0",
        "state_dict": state, "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
            "total": {"ready": 5, "completed": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val.cer', 'mode': 'min'}": {
            "best_model_score": torch.tensor(0.07), "best_model_path": "/x/epoch=3.ckpt",
            "best_k_models": {"/x/epoch=3.ckpt": torch.tensor(0.07)}}},
        "optimizer_states": [_adam_state(model)],
        "lr_schedulers": [{"step_size": 10, "gamma": 0.1}],
        "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.1, "classes": 11},
    }
    torch.save(checkpoint, tmp_path / "epoch=4.ckpt")
    loaded = load_weights(tmp_path / "epoch=4.ckpt")
    _same(loaded, state)
    assert loaded.note.count("\n") == 0 and "read the tensors of 'state_dict'" in loaded.note
    assert "9 entries" in loaded.note and "optimizer_states (list)" in loaded.note


def test_several_dicts_of_tensors_are_refused_until_key_picks_one(tmp_path):
    state, ema = _state(), {k: v + 1 for k, v in _state().items()}
    path = tmp_path / "ema.pt"
    torch.save({"model": state, "ema_model": ema, "epoch": 1}, path)
    with pytest.raises(ValueError) as err:
        load_weights(path)
    message = str(err.value)
    assert message.startswith(f"{path}: holds 2 dicts of tensors") and "\n" not in message
    assert "'model' (32 tensors), 'ema_model' (32 tensors)" in message
    assert "--key model" in message and "key='model'" in message
    _same(load_weights(path, key="ema_model"), ema)
    _same(load_weights(path, key="model"), state)
    # A dotted path, and a key that holds dots itself.
    torch.save({"runs": {"a": state, "b.c": ema}}, tmp_path / "nested.pt")
    _same(load_weights(tmp_path / "nested.pt", key="runs.b.c"), ema)
    _same(load_weights(tmp_path / "nested.pt", key="runs.a"), state)
    for key, fragment in (("nope", "has no entry 'nope' at the top level; its entries are "
                                   "model, ema_model, epoch"),
                          ("epoch", "entry 'epoch' is a int, not a dict of tensors"),
                          ("model.cnn", "has no entry 'cnn' at 'model'")):
        with pytest.raises(ValueError, match=f"{path}: .*") as err:
            load_weights(path, key=key)
        assert fragment in str(err.value)
    # Through the command line: one line, exit 2, nothing written; --key picks one.
    out = tmp_path / "r.json"
    _refused(["optimize", path, *TINY, "--out", out], "ema.pt", "--key model")
    assert not out.exists()
    status, text, _ = _run(["layers", path, "--key", "ema_model"])
    assert status == 0 and "11 layer(s)" in text
    _refused(["layers", path, "--key", "nope"], "has no entry 'nope'")
    _refused(["plot", tmp_path / "none.json", "--out", tmp_path / "p", "--key", "model"],
             "--key", "--weights")


def test_a_dict_saved_twice_or_inside_itself_counts_once(tmp_path):
    state = _state()
    torch.save({"model": state, "same": state, "epoch": 1}, tmp_path / "twice.pt")
    _same(load_weights(tmp_path / "twice.pt"), state)  # one dict under two names
    looped: dict = {"fc.weight": torch.ones(2, 2)}
    looped["self"] = looped
    torch.save(looped, tmp_path / "loop.pt")
    loaded = load_weights(tmp_path / "loop.pt")
    assert list(loaded) == ["fc.weight"] and "self (dict)" in loaded.note


def test_masks_and_complex_tensors_are_left_out_and_named(tmp_path):
    state = {"a.weight": torch.ones(3, 2), "a.mask": torch.ones(3, 2, dtype=torch.bool),
             "b.spectrum": torch.ones(2, dtype=torch.complex64)}
    torch.save(state, tmp_path / "m.pt")
    loaded = load_weights(tmp_path / "m.pt")
    assert list(loaded) == ["a.weight"]
    assert "ignored 2 tensor(s) that are not real numbers: a.mask (bool), b.spectrum " \
           "(complex64)" in loaded.note
    torch.save({"mask": torch.ones(2, 2, dtype=torch.bool)}, tmp_path / "only.pt")
    with pytest.raises(ValueError, match=r"only\.pt: holds no real-valued tensors.*bool"):
        load_weights(tmp_path / "only.pt")


def test_python_objects_are_refused_without_unpickling(tmp_path):
    import argparse

    torch.save({"model": _state(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "args.pt")
    with pytest.raises(ValueError, match=r"args\.pt: holds Python objects \(argparse"
                                         r"\.Namespace\)") as err:
        load_weights(tmp_path / "args.pt")
    assert "weights_only" not in str(err.value)
    with pytest.raises(ValueError, match=r"list\.pt: holds a list, not a state_dict"):
        torch.save([torch.ones(2)], tmp_path / "list.pt")
        load_weights(tmp_path / "list.pt")
    torch.save({"epoch": 3, "names": ["a"]}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match=r"none\.pt: holds no tensors \(its entries: epoch "
                                         r"\(int\), names \(list\)\)"):
        load_weights(tmp_path / "none.pt")


# -- Hugging Face files and directories ------------------------------------------------------


def _shard(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    return {n: state[n].contiguous() for n in names}


def _write_sharded(directory: Path, state: dict[str, torch.Tensor], fmt: str = "safetensors"
                   ) -> Path:
    """A Hugging Face sharded checkpoint of ``state`` in two shards, and its index."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(state)
    parts = {f"model-0000{i + 1}-of-00002.{fmt}": names[i::2] for i in range(2)}
    for shard, shard_names in parts.items():
        if fmt == "safetensors":
            save_file(_shard(state, shard_names), str(directory / shard))
        else:
            torch.save(_shard(state, shard_names), directory / shard)
    shard_of = {n: shard for shard, ns in parts.items() for n in ns}
    weight_map = {n: shard_of[n] for n in names}  # the index's order is the one read
    index = directory / ("model.safetensors.index.json" if fmt == "safetensors"
                         else "pytorch_model.bin.index.json")
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_sharded_checkpoint_and_its_directory(tmp_path, fmt):
    state = _state()
    index = _write_sharded(tmp_path / "hf", state, fmt)
    # The index's order (the weight_map's), every tensor from its shard.
    _same(load_weights(index), state)
    from_dir = load_weights(tmp_path / "hf")
    _same(from_dir, state)
    assert from_dir.source == index and from_dir.note == f"{tmp_path / 'hf'}: read {index.name}"
    assert index.name.endswith(".index.json")


def test_a_directory_is_read_as_hugging_face_reads_it(tmp_path):
    state = _state()
    hf = tmp_path / "hf"
    hf.mkdir()
    torch.save(state, hf / "pytorch_model.bin")
    torch.save({"step": 3}, hf / "optimizer.pt")  # a Trainer checkpoint's other files
    (hf / "config.json").write_text("{}")
    _same(load_weights(hf), state)
    save_file({k: v + 1 for k, v in state.items()}, str(hf / "model.safetensors"))
    assert torch.equal(load_weights(hf)["fc.weight"], state["fc.weight"] + 1)  # safetensors first
    one = tmp_path / "one"
    one.mkdir()
    torch.save(state, one / "weights.pth")
    _same(load_weights(one), state)
    torch.save(state, one / "other.ckpt")
    with pytest.raises(ValueError, match=r"one is a directory holding 2 weights files "
                                         r"\(other\.ckpt, weights\.pth\); name the one"):
        load_weights(one)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty is a directory holding no weights file"):
        load_weights(tmp_path / "empty")


def _index_case(tmp_path: Path, name: str, edit) -> Path:
    """A sharded checkpoint whose index (a dict) ``edit`` changes in place, or replaces by the
    text it returns; the index's path."""
    index = _write_sharded(tmp_path / name, {"a.weight": torch.ones(2, 3),
                                             "b.weight": torch.ones(3, 2)})
    document = json.loads(index.read_text())
    text = edit(document, index.parent)
    index.write_text(text if isinstance(text, str) else json.dumps(document))
    return index


SHARD_A, SHARD_B = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


INDEX_CASES = {
    "not json": (lambda doc, d: "{\"weight_map\": {", "not JSON"),
    "no weight_map": (lambda doc, d: doc.pop("weight_map") and None, "no \"weight_map\""),
    "missing shard": (lambda doc, d: (d / SHARD_B).unlink(), f"shard '{SHARD_B}' is missing"),
    "parent path": (lambda doc, d: doc["weight_map"].update({"a.weight": "../x.safetensors"}),
                    "outside the index's directory"),
    "absolute path": (lambda doc, d: doc["weight_map"].update(
        {"a.weight": str(d / SHARD_A)}), "outside the index's directory"),
    "not a weights file": (lambda doc, d: doc["weight_map"].update(
        {"a.weight": "config.json"}), "is not a .safetensors"),
    "in two shards": (lambda doc, d: save_file({"a.weight": torch.ones(2, 3),
                                                "b.weight": torch.ones(3, 2)},
                                               str(d / SHARD_B)),
                      "tensor 'a.weight' is in two shards"),
    "named twice": (lambda doc, d: json.dumps(doc)[:-2] + ', "a.weight": "' + SHARD_A + '"}}',
                    "names 'a.weight' twice"),
    "not in its shard": (lambda doc, d: doc["weight_map"].update({"c.weight": SHARD_A}),
                         "the index names 1 tensor(s) that no shard holds: 'c.weight'"),
    "not in the index": (lambda doc, d: save_file({"a.weight": torch.ones(2, 3),
                                                   "c.weight": torch.ones(1, 1)},
                                                  str(d / SHARD_A)),
                         "holds 'c.weight', but the index does not name it"),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_a_bad_index_is_refused_in_one_line_and_nothing_is_written(tmp_path, case):
    edit, fragment = INDEX_CASES[case]
    index = _index_case(tmp_path, "hf", edit)
    with pytest.raises(ValueError) as err:
        load_weights(index)
    message = str(err.value)
    assert message.startswith(str(index)) and "\n" not in message and fragment in message, \
        message
    out = tmp_path / "r.json"
    _refused(["optimize", index.parent, *TINY, "--out", out], fragment)
    assert not out.exists()


def test_a_shard_linked_from_outside_the_directory_is_refused(tmp_path):
    outside = tmp_path / "secret.safetensors"
    save_file({"a.weight": torch.ones(2, 3)}, str(outside))
    index = _write_sharded(tmp_path / "hf", {"a.weight": torch.ones(2, 3),
                                             "b.weight": torch.ones(3, 2)})
    (index.parent / SHARD_A).unlink()
    os.symlink(outside, index.parent / SHARD_A)
    with pytest.raises(ValueError, match=f"shard '{SHARD_A}' is outside the index's directory"):
        load_weights(index)


# -- the names in a results file are the model's own -----------------------------------------


#: A conv, a reverse LSTM matrix and the classifier: every kind of name, in a tiny search.
SOME_LAYERS = ["cnn.3.weight", "rnn.weight_hh_l0_reverse", "fc.weight"]


@pytest.mark.slow  # a tiny search of 3 layers through the command line (2-5 s)
def test_results_of_a_checkpoint_program_the_model_and_load_into_it(tmp_path):
    # The issue's checkpoint, saved from a DataParallel model: the results' names are the
    # model's own, with no 'module.'.
    model = crnn()
    path = tmp_path / "crnn.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "char2idx": {"a": 1}, "epoch": 3, "cer": 0.07}, path)
    out = tmp_path / "r.json"
    include = [arg for name in SOME_LAYERS for arg in ("--include", name.replace(".", r"\."))]
    status, _, err = _run(["optimize", path, *TINY, *include, "--out", out])
    assert status == 0, err
    result = load_result(out)
    assert [layer.name for layer in result.layers] == SOME_LAYERS
    programmed = gpuwpo.program_model(model, result, gpuwpo.PCMLikeNoiseModel(), 86400.0,
                                      generator=1)
    changed = {n for n, v in model.state_dict().items()
               if not torch.equal(v, programmed.state_dict()[n])}
    assert changed == set(SOME_LAYERS)
    fresh = crnn(seed=9)
    fresh.load_state_dict(programmed.state_dict())  # strict: every name is the model's
    effective = {layer.name: programmed.state_dict()[layer.name] for layer in result.layers}
    missing, unexpected = fresh.load_state_dict(effective, strict=False)
    assert unexpected == [] and not set(missing) & set(SOME_LAYERS)
    assert torch.equal(fresh.rnn.weight_hh_l0_reverse, programmed.rnn.weight_hh_l0_reverse)
    # The API reads the same checkpoint to the same names.
    assert list(gpuwpo.select_weights(torch.load(path, weights_only=True))) == list(CRNN_LAYERS)
    # DataParallel's wrapper takes them too.
    wrapped = gpuwpo.program_model(torch.nn.DataParallel(model), result,
                                   gpuwpo.PCMLikeNoiseModel(), 86400.0, generator=1)
    assert torch.equal(wrapped.module.fc.weight, programmed.fc.weight)
    # And evaluate takes the checkpoint as optimize did.
    status, text, err = _run(["evaluate", out, path, "--repeats", "2"])
    assert status == 0, err
    assert text.startswith(f"note: {path}: read the tensors of 'model_state_dict'")
