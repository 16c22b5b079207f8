"""Which tensors are layers (gpuwpo/network/layers.py): one rule for a module, its state_dict,
optimize_network, program_model and the command line; the mapped shape; what is skipped and why.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

import gpuwpo
from gpuwpo.cli import main
from gpuwpo.network.layers import (
    as_matrix,
    describe_layers,
    find_state_dict,
    mapped_shape,
    select_weights,
)
from gpuwpo.network.program import layer_key
from gpuwpo.rng import draw_seed, keyed_generator, make_generator


class CRNN(nn.Module):
    """A small CNN + bidirectional LSTM text recogniser, shaped like the ones packages ship:
    2 conv (with BatchNorm), a 2-layer BiLSTM, a character classifier."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Conv2d(4, 8, (3, 2), padding=(1, 0)), nn.BatchNorm2d(8),
                                 nn.ReLU())
        self.rnn = nn.LSTM(8 * 4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, 1, 4, width] -> logits [batch, width - 1, classes]."""
        f = self.cnn(x)                                  # [B, 8, 4, W - 1]
        f = f.permute(0, 3, 1, 2).flatten(2)             # [B, W - 1, 32]
        return self.fc(self.rnn(f)[0])


def crnn(seed: int = 0) -> CRNN:
    """A CRNN with seeded weights (from its own generator, never torch's global one)."""
    model = CRNN()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


#: The CRNN's layers, in its order, with their kinds and shapes as mapped.
CRNN_LAYERS = {
    "cnn.0.weight": ("conv", (4, 9)), "cnn.3.weight": ("conv", (8, 24)),
    "rnn.weight_ih_l0": ("rnn", (24, 32)), "rnn.weight_hh_l0": ("rnn", (24, 6)),
    "rnn.weight_ih_l0_reverse": ("rnn", (24, 32)), "rnn.weight_hh_l0_reverse": ("rnn", (24, 6)),
    "rnn.weight_ih_l1": ("rnn", (24, 12)), "rnn.weight_hh_l1": ("rnn", (24, 6)),
    "rnn.weight_ih_l1_reverse": ("rnn", (24, 12)), "rnn.weight_hh_l1_reverse": ("rnn", (24, 6)),
    "fc.weight": ("linear", (11, 12)),
}


def _categories(table) -> dict[str, str]:
    return {s.name: s.category for s in table.skipped}


def test_a_cnn_and_bilstm_has_every_matrix_found_and_the_rest_skipped_with_reasons():
    model = crnn()
    table = describe_layers(model)
    assert {x.name: (x.kind, x.mapped) for x in table.layers} == CRNN_LAYERS
    assert [x.name for x in table.layers] == list(CRNN_LAYERS)  # the model's order
    for x in table.layers:
        w = model.state_dict()[x.name]
        assert x.shape == tuple(w.shape) and x.numel == w.numel()
        assert x.peak_to_std == pytest.approx(float(w.abs().max() / w.std(correction=0)))
    skipped = _categories(table)
    assert {n for n, c in skipped.items() if c == "bias"} == {
        "cnn.0.bias", "cnn.3.bias", "fc.bias",
        *(f"rnn.bias_{g}_l{k}{d}" for g in ("ih", "hh") for k in (0, 1) for d in ("", "_reverse"))}
    assert {n for n, c in skipped.items() if c == "norm"} == {
        f"cnn.{i}.{a}" for i in (1, 4)
        for a in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert len(skipped) == 11 + 10 and set(skipped) | set(CRNN_LAYERS) == set(model.state_dict())
    assert table.summary() == ("11 layer(s), 3048 weights (2 conv, 8 rnn, 1 linear); skipped 21 "
                               "(biases 11, norms 10)")
    # select_weights: the same layers, sharing the parameters' storage.
    selected = select_weights(model)
    assert list(selected) == list(CRNN_LAYERS)
    assert selected["rnn.weight_hh_l1"].data_ptr() == model.rnn.weight_hh_l1.data_ptr()


def test_a_module_and_its_state_dict_agree():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.tokens = nn.Embedding(5, 4)  # an embedding by type, not by name
            self.norm = nn.LayerNorm(4)
            self.attn = nn.MultiheadAttention(4, 2)
            self.gru = nn.GRU(4, 3)
            self.conv1d = nn.Conv1d(4, 2, 3)
            self.conv3d = nn.Conv3d(2, 2, (1, 2, 3))
            self.head = nn.Linear(4, 7)

    model = Mixed()
    from_module, from_state = describe_layers(model), describe_layers(model.state_dict())
    expected = {"attn.in_proj_weight": ("linear", (12, 4)),
                "attn.out_proj.weight": ("linear", (4, 4)),
                "gru.weight_ih_l0": ("rnn", (9, 4)), "gru.weight_hh_l0": ("rnn", (9, 3)),
                "conv1d.weight": ("conv", (2, 12)), "conv3d.weight": ("conv", (2, 12)),
                "head.weight": ("linear", (7, 4))}
    module_layers = {x.name: (x.kind, x.mapped) for x in from_module.layers}
    assert module_layers == expected
    assert _categories(from_module)["tokens.weight"] == "embedding"
    # By names alone 'tokens' is no embedding: the one thing a state_dict cannot tell.
    state_layers = {x.name: (x.kind, x.mapped) for x in from_state.layers}
    assert state_layers == {**expected, "tokens.weight": ("linear", (5, 4))}
    cats_module, cats_state = _categories(from_module), _categories(from_state)
    del cats_module["tokens.weight"]
    assert cats_module == cats_state
    assert cats_state["embed.weight"] == "embedding" and cats_state["norm.weight"] == "norm"


def test_names_and_shapes_decide_for_a_plain_mapping():
    f = torch.ones
    weights = {
        "bert.embeddings.word_embeddings.weight": f(30, 8),
        "bert.embeddings.position_embeddings.weight": f(16, 8),
        "bert.embeddings.LayerNorm.weight": f(8), "bert.embeddings.LayerNorm.bias": f(8),
        "bert.embeddings.position_ids": torch.arange(16).unsqueeze(0),
        "bert.encoder.layer.0.attention.self.query.weight": f(8, 8),
        "bert.encoder.layer.0.attention.self.query.bias": f(8),
        "transformer.wte.weight": f(30, 8), "shared.weight": f(30, 8),
        "unet.time_embed.0.weight": f(16, 8),       # a Linear inside an embedding block
        "vit.patch_embed.proj.weight": f(8, 3, 4, 4),  # a Conv inside one
        "vit.pos_embed": f(1, 5, 8), "vit.cls_token": f(1, 1, 8),
        "lstm.weight_ih_l0": f(12, 8), "lstm.weight_hh_l0_reverse": f(12, 3),
        "cell.weight_ih": f(12, 8), "lstm.bias_ih_l0": f(12), "scale": f(3), "step": f(()),
        "mask.weight": torch.ones(4, 4, dtype=torch.bool), "empty.weight": f(0, 3),
        "codes.weight": torch.ones(4, 4, dtype=torch.int8),
    }
    table = describe_layers(weights)
    assert {x.name: x.kind for x in table.layers} == {
        "bert.encoder.layer.0.attention.self.query.weight": "linear",
        "unet.time_embed.0.weight": "linear", "vit.patch_embed.proj.weight": "conv",
        "lstm.weight_ih_l0": "rnn", "lstm.weight_hh_l0_reverse": "rnn", "cell.weight_ih": "rnn"}
    assert _categories(table) == {
        "bert.embeddings.word_embeddings.weight": "embedding",
        "bert.embeddings.position_embeddings.weight": "embedding",
        "bert.embeddings.LayerNorm.weight": "norm", "bert.embeddings.LayerNorm.bias": "norm",
        "bert.embeddings.position_ids": "integer",
        "bert.encoder.layer.0.attention.self.query.bias": "bias",
        "transformer.wte.weight": "embedding", "shared.weight": "embedding",
        "vit.pos_embed": "embedding", "vit.cls_token": "other", "lstm.bias_ih_l0": "bias",
        "scale": "vector", "step": "scalar", "mask.weight": "boolean", "empty.weight": "empty",
        "codes.weight": "integer"}
    assert {x.name: x.mapped for x in table.layers}["vit.patch_embed.proj.weight"] == (8, 48)


def test_include_narrows_the_layers_and_adds_a_skipped_tensor_by_its_whole_name():
    model = crnn()
    # Found anywhere in a name: narrows the default layers, never adds a bias.
    assert list(select_weights(model, include=r"rnn\.")) == [
        n for n in CRNN_LAYERS if n.startswith("rnn.")]
    assert list(select_weights(model, include="l1", exclude="reverse")) == [
        "rnn.weight_ih_l1", "rnn.weight_hh_l1"]
    # A whole name adds a tensor skipped by default, as kind "other", mapped as a column.
    table = describe_layers(model, include=[r"fc\..*", r"cnn\.1\.weight"])
    assert {x.name: (x.kind, x.mapped) for x in table.layers} == {
        "cnn.1.weight": ("other", (4, 1)), "fc.weight": ("linear", (11, 12)),
        "fc.bias": ("other", (11, 1))}
    assert list(select_weights(model, include=".*", exclude="running|rnn|cnn")) == [
        "fc.weight", "fc.bias"]
    # Never an integer counter, whatever the pattern.
    assert "cnn.1.num_batches_tracked" not in select_weights(model, include=".*")
    # Excluding wins over including.
    assert "fc.bias" not in select_weights(model, include=r"fc\.bias|fc", exclude="bias")
    reasons = {s.name: s.reason for s in describe_layers(model, include="fc",
                                                         exclude="cnn").skipped}
    assert reasons["cnn.0.weight"] == "matches no --include pattern: 'fc'"


def test_tied_weights_are_programmed_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 4)
            self.block = nn.Linear(4, 4)
            self.again = self.block  # one module under two names
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.emb.weight

    table = describe_layers(Tied())
    assert [x.name for x in table.layers] == ["block.weight", "head.weight"]
    reasons = {s.name: (s.category, s.reason) for s in table.skipped}
    assert reasons["again.weight"] == ("tied", "the same tensor as 'block.weight' (tied weights)")
    assert reasons["emb.weight"][0] == "embedding"
    # The same from its state_dict (torch.save keeps the sharing).
    assert list(select_weights(Tied().state_dict())) == ["block.weight", "head.weight"]


def test_nothing_to_program_is_one_line_naming_the_patterns_and_the_reasons():
    with pytest.raises(ValueError) as err:
        select_weights(crnn(), include="nothing_like_this")
    message = str(err.value)
    assert "\n" not in message and "include=['nothing_like_this']" in message
    assert "'cnn.0.bias' (bias" in message and "matches no --include" in message
    with pytest.raises(ValueError, match="no layers to program.*ndim >= 2"):
        select_weights({"a.weight": torch.tensor(2.0)})
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select_weights(crnn(), include="(")
    with pytest.raises(TypeError, match="nn.Module, a state_dict"):
        select_weights([torch.ones(2, 2)])


def test_mapped_shape_and_as_matrix():
    assert mapped_shape((8, 3, 5, 5)) == (8, 75) and mapped_shape((4, 6)) == (4, 6)
    assert mapped_shape((7,)) == (7, 1) and mapped_shape((2, 3, 4, 5, 6)) == (2, 360)
    with pytest.raises(ValueError, match="0-d"):
        mapped_shape(())
    w = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    m = as_matrix(w)
    # Row r of the matrix is output channel r, in (in, k) order: aihwkit's unrolled kernel.
    assert m.shape == (2, 12) and torch.equal(m[1], w[1].flatten())
    assert torch.equal(m.reshape(w.shape), w)


def test_program_model_simulates_a_conv_at_its_mapped_shape():
    # Per-column compensation takes a mean per crossbar row (an output channel over in * k):
    # the result is what simulate_weights gives on the mapped matrix, and not what it gives on
    # the 4-D tensor (where the last kernel axis would be taken for the crossbar's columns).
    model = crnn()
    w = model.cnn[3].weight.detach()
    conv = gpuwpo.DualPairConductanceConverter()
    noise, comp = gpuwpo.PCMLikeNoiseModel(), gpuwpo.PerColumnDriftCompensation()
    programmed = gpuwpo.program_model(model, {"cnn.3.weight": conv}, noise, 86400.0,
                                      generator=5, compensation=comp)
    # program_model draws each layer's noise from the stream of its name (layer_key).
    layer_gen = keyed_generator(draw_seed(make_generator(5)), layer_key("cnn.3.weight"))
    state = layer_gen.get_state()
    expected = gpuwpo.simulate_weights(as_matrix(w), conv, noise, [86400.0], comp, repeats=1,
                                       generator=layer_gen)[0, 0]
    assert torch.equal(programmed.cnn[3].weight.detach(), expected.reshape(w.shape))
    layer_gen.set_state(state)
    unmapped = gpuwpo.simulate_weights(w, conv, noise, [86400.0], comp, repeats=1,
                                       generator=layer_gen)[0, 0]
    assert not torch.allclose(programmed.cnn[3].weight.detach(), unmapped)


def test_program_model_with_one_converter_programs_every_layer_the_rule_finds():
    model = crnn()
    programmed = gpuwpo.program_model(model, gpuwpo.DualPairConductanceConverter(),
                                      gpuwpo.PCMLikeNoiseModel(), 3600.0, generator=0)
    before, after = model.state_dict(), programmed.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(CRNN_LAYERS)  # the LSTM's matrices too; biases and norms as they were


def test_the_api_reads_a_checkpoint_dict_as_the_command_line_does():
    model = crnn()
    checkpoint = {"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                  "char2idx": {"a": 1}, "epoch": 3, "cer": 0.07}
    assert list(select_weights(checkpoint)) == list(CRNN_LAYERS)
    tensors, notes = find_state_dict(checkpoint)
    assert list(tensors) == list(model.state_dict())
    assert notes[0] == "read the tensors of 'model_state_dict'"
    assert "char2idx (dict)" in notes[1] and "epoch (int)" in notes[1]
    assert "DataParallel" in notes[2]
    two = {"model": model.state_dict(), "ema_model": model.state_dict()}
    with pytest.raises(ValueError, match=r"'model' \(32 tensors\), 'ema_model'.*--key model"):
        select_weights(two)
    assert list(select_weights(two, key="ema_model")) == list(CRNN_LAYERS)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def test_gpuwpo_layers_prints_the_table_and_optimize_the_same_summary(tmp_path, monkeypatch):
    model = crnn()
    path = tmp_path / "crnn.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    status, out, err = _run(["layers", str(path)])
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"note: {path}: read the tensors of 'model_state_dict'; ignored 1 entry " \
                       f"that is not weights: epoch (int)"
    summary = describe_layers(model).summary()
    assert lines[1] == f"{path}: {summary}"
    assert describe_layers(model).table() in out
    assert any(line.split()[:2] == ["rnn.weight_hh_l1_reverse", "(24,"] for line in lines)
    # optimize: the note and the one summary line, then the search (stopped here).
    def stop(*args, **kwargs):
        raise ValueError("the search would start here")

    monkeypatch.setattr(gpuwpo.network, "optimize_network", stop)
    status, out, err = _run(["optimize", str(path), "--device", "cpu"])
    assert status == 2 and "the search would start here" in err
    assert out.splitlines() == [lines[0], summary]
    status, out, err = _run(["layers", str(path), "--include", r"fc\.weight"])
    assert status == 0 and "1 layer(s), 132 weights (1 linear)" in out
    # Nothing to program: one line, exit 2.
    status, out, err = _run(["layers", str(path), "--exclude", "."])
    assert status == 2 and err.startswith("gpuwpo: error: ") and err.count("\n") == 1
    assert "no layers to program" in err
