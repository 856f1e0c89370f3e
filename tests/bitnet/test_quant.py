"""BitLinear and the packed model: λ = 0 is the Linear it replaced, λ = 1 is ternary with int8 activations,
the straight-through gradient reaches the latent weights, a frozen layer's integer path equals the float
formula, a saved and reloaded packed model gives the in-memory model's logits exactly, and bad input fails
clearly."""

import json

import pytest
import torch
from torch import nn

from services.bitnet.core.packed import MANIFEST, PACKED, load_packed, pack_nibbles, save_packed, unpack_nibbles
from services.bitnet.core.quant import (
    BitLinear, activation_quant, bitlinear_modules, convert_to_bitlinear, get_compression_config,
    get_conservative_compression_config, measure_sparsity, memory_init_parameters, quantize_memory_inits,
    quantize_rows, set_lambda, ternary_codes, weight_scale,
)
from shared.errors import FailedPreconditionError, InvalidSpecError
from tests.model.helpers import tiny_model

IDS = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(3))


def linear(seed=0, i=20, o=7):
    torch.manual_seed(seed)
    return nn.Linear(i, o)


def test_lambda_zero_is_the_linear_it_replaced():
    lin = linear()
    bl = BitLinear.from_linear(lin)
    x = torch.randn(3, 5, 20)
    assert torch.allclose(bl(x), lin(x), atol=1e-5)


def test_lambda_one_is_ternary_weights_times_int8_activations():
    lin = linear(1)
    bl = BitLinear.from_linear(lin)
    set_lambda([bl], 1.0)
    x = torch.randn(4, 20)
    r = (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    codes, s = activation_quant(x / r)
    assert codes.abs().max() <= 127 and codes.dtype == torch.int8
    g = weight_scale(lin.weight)
    w = ternary_codes(lin.weight, g)
    assert set(w.unique().tolist()) <= {-1, 0, 1}
    expected = (codes.float() * s[:, None]) @ (w.float() * g).T * r + lin.bias
    assert torch.allclose(bl(x), expected, atol=1e-5)


def test_the_straight_through_gradient_reaches_the_latent_weight():
    bl = BitLinear.from_linear(linear(2))
    set_lambda([bl], 1.0)
    bl(torch.randn(4, 20)).sum().backward()
    assert bl.weight.grad is not None and bl.weight.grad.abs().sum() > 0
    assert bl.gain.grad is not None and bl.gain.grad.abs().sum() > 0


def test_a_frozen_layer_computes_the_float_formula_through_the_integer_kernel():
    bl = BitLinear.from_linear(linear(3, i=33, o=9))
    set_lambda([bl], 1.0)
    x = torch.randn(2, 6, 33)
    soft = bl(x)
    bl.freeze("2bit")
    assert bl.packed.numel() == -(-33 * 9 // 4) and bl.weight.numel() == 0
    hard = bl(x)
    assert torch.allclose(hard, soft, atol=1e-4)      # same quantities, integer accumulation
    with pytest.raises(FailedPreconditionError, match="λ = 1"):
        BitLinear.from_linear(linear(3)).freeze()


def compressed(pack_format="2bit", bits=8, seed=0, init_bits=32):
    model = tiny_model(seed).float().eval()     # the packed format keeps float32
    names = convert_to_bitlinear(model)
    assert names and all(isinstance(m, BitLinear) for m in bitlinear_modules(model).values())
    set_lambda(bitlinear_modules(model), 1.0)
    for m in bitlinear_modules(model).values():
        m.freeze(pack_format)
    codes, scale = quantize_rows(model.embed.weight, bits)
    with torch.no_grad():
        model.embed.weight.copy_(codes.float() * scale[:, None])
    model.memory_init = quantize_memory_inits(model, init_bits)
    return model, {"bits": bits, "codes": codes, "scale": scale}


@pytest.mark.parametrize("pack_format,bits,init_bits", [("2bit", 8, 32), ("base3", 4, 8), ("2bit", 4, 16),
                                                        ("2bit", 4, 4)])
def test_a_reloaded_packed_model_gives_exactly_the_in_memory_logits(tmp_path, pack_format, bits, init_bits):
    model, emb = compressed(pack_format, bits, init_bits=init_bits)
    assert memory_init_parameters(model)
    out = save_packed(model, tmp_path / "m", embedding=emb, pack_format=pack_format, memory_init_bits=init_bits,
                      memory_init=model.memory_init)
    again = load_packed(out)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, again(IDS).logits)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["pack_format"] == pack_format and manifest["embedding_bits"] == bits
    assert manifest["memory_init_bits"] == init_bits
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))
    sparsity = measure_sparsity(model)
    assert 0.0 < sparsity < 1.0 and measure_sparsity(again) == sparsity


def test_a_packed_file_whose_hash_does_not_match_is_refused(tmp_path):
    model, emb = compressed()
    out = save_packed(model, tmp_path / "m", embedding=emb, pack_format="2bit")
    data = bytearray((out / PACKED).read_bytes())
    data[-1] ^= 0xFF
    (out / PACKED).write_bytes(bytes(data))
    with pytest.raises(FailedPreconditionError, match="sha256"):
        load_packed(out)


def test_a_model_with_no_linear_layers_is_refused():
    class NoLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(4, 2)

    with pytest.raises(FailedPreconditionError, match="no linear layer"):
        convert_to_bitlinear(NoLinear())


def test_int4_nibbles_round_trip_and_per_row_codes_bound_the_error():
    codes = torch.randint(-7, 8, (5, 3), dtype=torch.int8)
    packed = pack_nibbles(codes)
    assert packed.numel() == 8 and torch.equal(unpack_nibbles(packed, (5, 3)), codes)
    w = torch.randn(6, 10)
    for bits, q in ((8, 127), (4, 7)):
        c, s = quantize_rows(w, bits)
        assert c.abs().max() <= q
        assert ((c.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()
    with pytest.raises(InvalidSpecError, match="embedding_bits"):
        quantize_rows(w, 3)


def test_the_checklists_configs():
    tiny = get_compression_config("tiny")
    assert set(tiny) >= {"sparsity_threshold", "target_compression", "preserve_layers", "calibration_samples"}
    assert tiny["target_compression"] == 6.0 and get_compression_config("small")["target_compression"] == 8.0
    safe = get_conservative_compression_config("tiny")
    assert safe["target_compression"] < tiny["target_compression"] and safe["preserve_layers"]
    with pytest.raises(InvalidSpecError, match="size_category"):
        get_compression_config("huge")
    # the conservative config really keeps its layers full precision
    model = tiny_model(0)
    names = convert_to_bitlinear(model, exclude=tuple(safe["preserve_layers"]))
    assert names and not any(".memory." in n for n in names)
