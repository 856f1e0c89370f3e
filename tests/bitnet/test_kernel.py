"""services/bitnet/core/kernel.py: the C++ ternary × int8 kernel against the pure-torch reference (issue #10).

The first test that needs the C++ backends builds the extension (~20 s cold, cached under
$TORCH_EXTENSIONS_DIR or torch's default afterwards). Where it cannot be built those tests skip with the
build error as the reason; the "torch" reference tests still run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from services.bitnet.core import kernel as K
from services.bitnet.core.kernel import (
    KernelWeight,
    available_backends,
    prepare_weight,
    row_bytes,
    ternary_linear,
    ternary_linear_f32,
    ternary_matmul_int,
)
from services.bitnet.core.quant import activation_quant
from shared.errors import InvalidSpecError

INS = (1, 3, 5, 31, 33, 127, 129, 257)
OUTS = (1, 7, 64)
BATCHES = (1, 3, 64)


@pytest.fixture(scope="module")
def cpp_backends() -> list[str]:
    found = [b for b in available_backends() if b != "torch"]
    if not found:
        pytest.skip(f"the C++ extension could not be built here: {K.extension_error()}")
    return found


def codes_for(out, n, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (out, n), generator=g, dtype=torch.int8)


def acts_for(b, n, seed, lo=-127, hi=127) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(lo, hi + 1, (b, n), generator=g, dtype=torch.int8)


def scales_for(b, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    return torch.rand(b, generator=g) * 0.1 + 1e-3


def test_reference_is_the_plain_integer_product():
    c, x = codes_for(7, 33, 0), acts_for(3, 33, 0)
    w = prepare_weight(c)
    want = x.to(torch.int64) @ c.to(torch.int64).T
    assert torch.equal(ternary_matmul_int(x, w, "torch"), want.to(torch.int32))
    xs = scales_for(3, 0)
    y = ternary_linear(x, xs, w, 0.25, "torch")
    assert y.dtype == torch.float32 and torch.equal(y, want.to(torch.float32) * xs[:, None] * 0.25)


def test_prepare_weight_round_trips_and_sizes():
    for n in (0, 1, 4, 31, 32, 33, 127, 128, 129, 255, 256, 257, 512, 1000):
        c = codes_for(5, n, n)
        w = prepare_weight(c)
        assert w.out_features == 5 and w.in_features == n
        assert w.data.dtype == torch.uint8 and tuple(w.data.shape) == (5, row_bytes(n))
        assert -(-n // 4) <= row_bytes(n) < -(-n // 4) + 8, n      # 2 bits per weight + < 8 bytes row pad
        assert torch.equal(w.codes(), c), n


def test_prepared_weight_memory_is_two_bits_per_weight():
    for out, n in ((1024, 1024), (512, 2048), (2048, 512), (64, 512), (512, 64), (7, 257)):
        w = prepare_weight(codes_for(out, n, 1))
        assert w.nbytes == w.data.numel() * w.data.element_size()
        assert out * -(-n // 4) <= w.nbytes <= out * (-(-n // 4) + 7)
        if n % 32 == 0:
            assert w.nbytes == out * n // 4


def test_kernel_layout_by_hand():
    # in = 130: one 128-block, then a 2-weight tail in one 8-byte sub-block (codes c = w + 1)
    c = torch.zeros(1, 130, dtype=torch.int8)
    c[0, 0], c[0, 32], c[0, 64], c[0, 96], c[0, 1] = 1, -1, 1, 1, -1   # block byte 0: c = 2, 0, 2, 2
    c[0, 128], c[0, 129] = -1, 1                                       # tail byte 0 and byte 1, k = 0
    data = prepare_weight(c).data[0].tolist()
    assert len(data) == 40
    assert data[0] == 0b10_10_00_10 and data[1] == 0b01_01_01_00 and set(data[2:32]) == {0b01_01_01_01}
    assert data[32] == 0b01_01_01_00 and data[33] == 0b01_01_01_10 and set(data[34:40]) == {0b01_01_01_01}


def test_every_backend_equals_the_reference(cpp_backends):
    seed = 0
    for n in INS:
        for out in OUTS:
            w = prepare_weight(codes_for(out, n, seed))
            for b in BATCHES:
                seed += 1
                x, xs, ws = acts_for(b, n, seed), scales_for(b, seed), 0.01 + seed * 1e-4
                ref_i = ternary_matmul_int(x, w, "torch")
                ref_f = ternary_linear(x, xs, w, ws, "torch")
                for be in cpp_backends:
                    got_i = ternary_matmul_int(x, w, be)
                    got_f = ternary_linear(x, xs, w, ws, be)
                    assert got_i.dtype == torch.int32 and got_f.dtype == torch.float32
                    assert torch.equal(got_i, ref_i), (be, b, out, n)
                    assert torch.equal(got_f, ref_f), (be, b, out, n)


@pytest.mark.parametrize("value", [127, -127, -128])
def test_extreme_activations(cpp_backends, value):
    # all-±127 (and -128, which absmax never produces but the kernels keep exact) over long rows stress the
    # int16 partial sums: 2048 = 16 whole blocks, the most summed before widening to int32
    for n in (2048, 2048 + 129, 4096 + 33):
        for wv in (1, -1, None):
            c = codes_for(9, n, n) if wv is None else torch.full((9, n), wv, dtype=torch.int8)
            w = prepare_weight(c)
            x = torch.full((5, n), value, dtype=torch.int8)
            ref = ternary_matmul_int(x, w, "torch")
            if wv is not None:
                assert int(ref[0, 0]) == value * wv * n
            for be in cpp_backends:
                assert torch.equal(ternary_matmul_int(x, w, be), ref), (be, n, wv, value)


SIMD = ("avx512vnni", "avx2")
# B = 1 takes the VNNI path's eight-row tile; odd/even counts of 128-blocks, tails, remainders of 8 rows.
SIMD_SHAPES = [(1, 512, 512), (64, 64, 2048), (3, 33, 1000), (17, 5, 64), (1, 17, 384), (1, 24, 256), (1, 9, 1152),
               (1, 8, 640), (5, 13, 130), (2, 3, 7)]


def simd_or_skip(cpp_backends) -> list[str]:
    found = [b for b in SIMD if b in cpp_backends]
    if not found:
        pytest.skip("this CPU has neither AVX-512 VNNI nor AVX2: only the portable C++ path runs")
    return found


def test_simd_paths_and_portable_agree(cpp_backends):
    for be in simd_or_skip(cpp_backends):
        for seed, (b, out, n) in enumerate(SIMD_SHAPES):
            w = prepare_weight(codes_for(out, n, seed))
            x, xs = acts_for(b, n, seed, -128, 127), scales_for(b, seed)
            assert torch.equal(ternary_matmul_int(x, w, be), ternary_matmul_int(x, w, "portable")), (be, b, out, n)
            assert torch.equal(ternary_linear(x, xs, w, 0.37, be), ternary_linear(x, xs, w, 0.37, "portable"))


def test_threads_do_not_change_results(cpp_backends):
    w = prepare_weight(codes_for(1024, 257, 3))
    x, xs = acts_for(6, 257, 3), scales_for(6, 3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = {be: ternary_linear(x, xs, w, 0.5, be) for be in cpp_backends}
        torch.set_num_threads(2)
        for be in cpp_backends:
            assert torch.equal(ternary_linear(x, xs, w, 0.5, be), one[be])
    finally:
        torch.set_num_threads(before)


def test_default_backend_is_the_best_available():
    backends = available_backends()
    assert backends[-1] == "torch" and set(backends) <= {"avx512vnni", "avx2", "portable", "torch"}
    assert backends == [b for b in K.BACKENDS if b in backends]                    # best first
    w = prepare_weight(codes_for(3, 10, 0))
    x = acts_for(2, 10, 0)
    assert torch.equal(ternary_matmul_int(x, w), ternary_matmul_int(x, w, backends[0]))


def test_scale_forms_give_the_same_floats():
    w = prepare_weight(codes_for(8, 40, 5))
    x, xs = acts_for(4, 40, 5), scales_for(4, 5)
    a = ternary_linear(x, xs, w, 0.1)                                   # python float → rounded to float32
    assert torch.equal(a, ternary_linear(x, xs, w, torch.tensor(0.1)))
    assert torch.equal(a, ternary_linear(x, xs, w, torch.tensor(0.1, dtype=torch.float64)))
    assert torch.equal(a, ternary_linear(x, xs, w, 0.1, "torch"))


# -- ternary_linear_f32: activation quantization fused into the kernel --------------------------------------

def floats_for(b, n, seed) -> torch.Tensor:
    """Rows of very different magnitudes (incl. one tiny row below the 1e-6 amax clamp when b > 2)."""
    g = torch.Generator().manual_seed(seed + 3)
    mags = torch.logspace(-3, 3, b)[torch.randperm(b, generator=g)]
    x = torch.randn(b, n, generator=g) * mags[:, None]
    if b > 2:
        x[1] *= 1e-5
    return x


def composed(x, w, ws):
    return ternary_linear(*activation_quant(x), w, ws, "torch")


def identity_weight(n) -> KernelWeight:
    """With this weight and w_scale 1, y[b, i] = code[b, i] · scale[b]: the codes can be read back."""
    return prepare_weight(torch.eye(n, dtype=torch.int8))


def test_fused_equals_quantize_then_kernel(cpp_backends):
    seed = 100
    for n in INS + (2048 + 33,):
        for out in OUTS:
            w = prepare_weight(codes_for(out, n, seed))
            for b in BATCHES:
                seed += 1
                x, ws = floats_for(b, n, seed), 0.01 + seed * 1e-4
                want = composed(x, w, ws)
                assert torch.equal(ternary_linear_f32(x, w, ws, "torch"), want)
                for be in cpp_backends:
                    got = ternary_linear_f32(x, w, ws, be)
                    assert got.dtype == torch.float32 and got.shape == (b, out)
                    assert torch.equal(got, want), (be, b, out, n)
                    assert torch.equal(got, ternary_linear(*activation_quant(x), w, ws, be)), (be, b, out, n)


@pytest.mark.parametrize("scale", [1.0, 3.0, 2.0 ** -20, 2.0 ** 30])
def test_exact_halves_round_to_even(cpp_backends, scale):
    # x = (k + ½)·scale with amax = 127·scale, so x / scale hits every half from −127.5 to 126.5 exactly
    n = 256 + 40                                                       # vector body and scalar tail
    halves = torch.arange(-127, 127, dtype=torch.float32) + 0.5        # 254 values
    row = torch.cat([halves, halves[:n - 256], torch.tensor([127.0, -127.0])]) * scale
    x = torch.stack([row, row.flip(0), -row])
    w = identity_weight(n)
    codes, s = activation_quant(x)
    assert torch.equal(s, torch.full((3,), scale, dtype=torch.float32))
    assert torch.equal(codes[0, :254], torch.round(halves).to(torch.int8))
    assert codes[0, 127] == 0 and codes[0, 128] == 2 and codes[0, 126] == 0 and codes[0, 125] == -2  # ±½, 1½
    want = composed(x, w, 1.0)
    assert torch.equal(want, codes.float() * s[:, None])
    for be in cpp_backends:
        assert torch.equal(ternary_linear_f32(x, w, 1.0, be), want), be


def test_division_not_reciprocal_multiply(cpp_backends):
    # values where x * (1/scale) and x / scale round to different integers: a kernel that multiplies by the
    # reciprocal (what -ffast-math would do) fails here
    amax = torch.tensor(100.0)
    s = amax / 127
    k = torch.arange(-126, 126, dtype=torch.float32) + 0.5
    cand = (k[:, None] * s + torch.arange(-4, 5)[None, :] * torch.finfo(torch.float32).eps * k.abs()[:, None] * s)
    cand = cand.flatten()
    differ = cand[torch.round(cand / s) != torch.round(cand * (1 / s))]
    assert differ.numel() >= 8
    x = torch.cat([differ[:200], amax.reshape(1)])[None].repeat(2, 1)
    x[1] = x[1].flip(0)
    w = prepare_weight(codes_for(5, x.shape[1], 0))
    want = composed(x, w, 0.5)
    idw = identity_weight(x.shape[1])
    for be in cpp_backends:
        assert torch.equal(ternary_linear_f32(x, w, 0.5, be), want), be
        assert torch.equal(ternary_linear_f32(x, idw, 1.0, be), composed(x, idw, 1.0)), be


def test_zero_tiny_and_huge_rows(cpp_backends):
    for n in (5, 40, 300):
        g = torch.Generator().manual_seed(n)
        r = torch.randn(n, generator=g)
        x = torch.stack([
            torch.zeros(n),                                            # amax 0 → the 1e-6 clamp, codes 0
            r * 1e-7,                                                  # amax < 1e-6: clamped scale
            r * 1e-40,                                                 # subnormal inputs
            r / r.abs().max() * 1e-6,                                  # amax exactly at the clamp
            r / r.abs().max() * torch.finfo(torch.float32).max,        # amax = FLT_MAX
            r * 1e36,
            torch.full((n,), -3e38),
        ])
        for w in (prepare_weight(codes_for(9, n, n)), identity_weight(n)):
            want = composed(x, w, 1.0)
            assert torch.equal(want[0], torch.zeros(w.out_features))
            for be in cpp_backends:
                assert torch.equal(ternary_linear_f32(x, w, 1.0, be), want), (be, n)
    codes, _ = activation_quant(x[1:2])
    assert codes.abs().max() > 1                                       # the clamp row really is quantized


def test_fused_simd_equals_portable(cpp_backends):
    for be in simd_or_skip(cpp_backends):
        for seed, (b, out, n) in enumerate(SIMD_SHAPES):
            w = prepare_weight(codes_for(out, n, seed))
            x = floats_for(b, n, seed)
            assert torch.equal(ternary_linear_f32(x, w, 0.37, be), ternary_linear_f32(x, w, 0.37, "portable"))


def test_default_fast_path_equals_checked_path_and_still_explains(cpp_backends):
    """backend=None calls the C++ kernel without the Python checks; what it refuses takes the checked path."""
    w = prepare_weight(codes_for(40, 300, 5))
    x = floats_for(3, 300, 5)
    best = available_backends()[0]
    assert torch.equal(ternary_linear_f32(x, w, 0.37), ternary_linear_f32(x, w, 0.37, best))
    assert torch.equal(ternary_linear_f32(x.double(), w, 0.37), ternary_linear_f32(x, w, 0.37, best))
    wide = floats_for(3, 600, 5)[:, ::2]                                               # not contiguous
    assert torch.equal(ternary_linear_f32(wide, w, 0.37), ternary_linear_f32(wide.contiguous(), w, 0.37, best))
    assert torch.equal(ternary_linear_f32(x, w, torch.tensor(0.37)), ternary_linear_f32(x, w, 0.37, best))
    assert torch.equal(ternary_linear_f32(x.requires_grad_(), w, 0.37), ternary_linear_f32(x, w, 0.37, best))
    bad = x.detach().clone()
    bad[1, 7] = float("nan")
    with pytest.raises(InvalidSpecError, match=r"rows \[1\]"):
        ternary_linear_f32(bad, w, 0.37)
    with pytest.raises(InvalidSpecError, match="301 features"):
        ternary_linear_f32(floats_for(3, 301, 5), w, 0.37)
    with pytest.raises(InvalidSpecError, match="floating"):
        ternary_linear_f32(acts_for(3, 300, 5), w, 0.37)


def test_prebuilt_kernel_is_loaded_only_when_built_from_this_source(cpp_backends, tmp_path):
    """Images prebuild the extension (AGENTFORGE_KERNEL_DIR); a stale build is not trusted."""
    lib = Path(K._ext.__file__)
    good = tmp_path / "good"
    good.mkdir()
    (good / lib.name).write_bytes(lib.read_bytes())
    (good / "source.sha256").write_text(K._source_sha256() + "\n")
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / lib.name).write_bytes(lib.read_bytes())
    (stale / "source.sha256").write_text("0" * 64 + "\n")
    probe = ("import logging, sys; logging.basicConfig(level=logging.WARNING);"
             "from services.bitnet.core import kernel as K; b = K.available_backends();"
             "print(K._ext.__file__); print(b)")
    root = Path(__file__).resolve().parents[2]
    for folder, from_dir in ((good, True), (stale, False)):
        env = {**os.environ, "AGENTFORGE_KERNEL_DIR": str(folder)}
        out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        loaded = out.stdout.splitlines()[0]
        assert (Path(loaded).parent == folder) is from_dir, (loaded, out.stderr)
        assert ("built from another source" in out.stderr) is (not from_dir)
        assert "'portable'" in out.stdout.splitlines()[1]


def test_fused_other_dtypes_and_threads(cpp_backends):
    w = prepare_weight(codes_for(300, 2048, 4))
    x = floats_for(64, 2048, 4)
    for dt in (torch.float64, torch.bfloat16):
        xd = x.to(dt)
        want = ternary_linear(*activation_quant(xd), w, 0.2, "torch")  # quantized from the original dtype
        for be in cpp_backends + ["torch"]:
            assert torch.equal(ternary_linear_f32(xd, w, 0.2, be), want), (be, dt)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = {be: ternary_linear_f32(x, w, 0.2, be) for be in cpp_backends}
        torch.set_num_threads(2)
        for be in cpp_backends:
            assert torch.equal(ternary_linear_f32(x, w, 0.2, be), one[be])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_fused_rejects_non_finite(bad):
    for n, pos in ((5, 3), (300, 7), (300, 290)):                      # scalar tail and vector body
        w = prepare_weight(codes_for(4, n, 0))
        x = torch.randn(3, n)
        x[2, pos] = bad
        for be in available_backends():
            with pytest.raises(InvalidSpecError) as e:
                ternary_linear_f32(x, w, 1.0, be)
            assert e.value.field == "x" and "[2]" in str(e.value), be


def test_fused_bad_inputs():
    w = prepare_weight(codes_for(4, 6, 0))
    for x in (torch.zeros(2, 6, dtype=torch.int8), torch.zeros(6), torch.zeros(2, 5), [[0.0] * 6]):
        with pytest.raises(InvalidSpecError) as e:
            ternary_linear_f32(x, w, 1.0)
        assert e.value.field == "x"
    with pytest.raises(InvalidSpecError) as e:
        ternary_linear_f32(torch.zeros(2, 6), w, 1.0, backend="cuda")
    assert e.value.field == "backend"
    assert ternary_linear_f32(torch.zeros(0, 6), w, 1.0).shape == (0, 4)
    xt = torch.randn(6, 3).T                                            # (3, 6), non-contiguous
    assert not xt.is_contiguous()
    assert torch.equal(ternary_linear_f32(xt, w, 1.0), composed(xt.contiguous(), w, 1.0))


def _allocated_bytes(fn) -> int:
    """Bytes handed out by torch's CPU allocator during fn() (the profiler's memory events; nested ops count
    again in their parents, so this over-counts, which is the safe side for an upper bound)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)


def test_no_out_by_in_allocation(cpp_backends):
    out = n = 1024
    w = prepare_weight(codes_for(out, n, 7))
    for b in (1, 64):
        x, xs = acts_for(b, n, 7), scales_for(b, 7)
        # the measurement sees the reference decode its weight (≥ out·in bytes)...
        assert _allocated_bytes(lambda: ternary_linear(x, xs, w, 0.5, "torch")) >= out * n * 2
        for be in cpp_backends:
            # ...and the C++ kernels allocate only their (B, out) output
            used = _allocated_bytes(lambda: ternary_linear(x, xs, w, 0.5, be))
            assert used < out * n * 2 and used <= b * out * 4 + 4096, (be, b, used)
            used = _allocated_bytes(lambda: ternary_matmul_int(x, w, be))
            assert used < out * n * 2 and used <= b * out * 4 + 4096, (be, b, used)
            # the fused path: only the output through torch's allocator (its int8 codes live in C++ scratch)
            xf = floats_for(b, n, 7)
            used = _allocated_bytes(lambda: ternary_linear_f32(xf, w, 0.5, be))
            assert used <= b * out * 4 + 4096, (be, b, used)


def test_bad_inputs_raise_invalid_spec():
    w = prepare_weight(codes_for(4, 6, 0))
    with pytest.raises(InvalidSpecError) as e:
        prepare_weight(torch.tensor([[0, 2]], dtype=torch.int8))
    assert e.value.field == "codes"
    with pytest.raises(InvalidSpecError) as e:
        prepare_weight(torch.zeros(2, 3))
    assert e.value.field == "codes"
    with pytest.raises(InvalidSpecError) as e:
        ternary_matmul_int(torch.zeros(2, 6), w)
    assert e.value.field == "x_q"
    with pytest.raises(InvalidSpecError) as e:
        ternary_matmul_int(torch.zeros(2, 5, dtype=torch.int8), w)
    assert e.value.field == "x_q"
    with pytest.raises(InvalidSpecError) as e:
        ternary_linear(torch.zeros(2, 6, dtype=torch.int8), torch.ones(3), w, 1.0)
    assert e.value.field == "x_scale"
    with pytest.raises(InvalidSpecError) as e:
        ternary_matmul_int(torch.zeros(2, 6, dtype=torch.int8), w, backend="cuda")
    assert e.value.field == "backend"
    with pytest.raises(InvalidSpecError) as e:
        KernelWeight(data=torch.zeros(4, 3, dtype=torch.uint8), out_features=4, in_features=6)
    assert e.value.field == "data"


def test_non_contiguous_activations():
    w = prepare_weight(codes_for(5, 40, 9))
    x = acts_for(40, 6, 9).T                                           # (6, 40) transposed view
    assert not x.is_contiguous()
    assert torch.equal(ternary_matmul_int(x, w), ternary_matmul_int(x.contiguous(), w, "torch"))


def test_without_a_toolchain_only_the_reference_remains(tmp_path):
    # a fresh process with no compiler or ninja on PATH and an empty extension cache: import and calls work,
    # one warning names the reason, and only "torch" is offered
    code = ("import logging, torch; logging.basicConfig(); from services.bitnet.core import kernel as K; "
            "w = K.prepare_weight(torch.ones(3, 5, dtype=torch.int8)); "
            "print(K.available_backends(), K.ternary_matmul_int(torch.ones(2, 5, dtype=torch.int8), w).tolist())")
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['torch'] [[5, 5, 5], [5, 5, 5]]"
    assert res.stderr.count("ternary kernel unavailable") == 1
