"""Training-memory estimate vs the measured peak of a real step, and calculate_safe_batch_size's contract."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from shared.errors import InvalidSpecError
from shared.utils import (
    InsufficientMemoryError,
    calculate_safe_batch_size,
    estimate_training_memory,
    profile_activations,
)
from shared.utils.activation_probe import _probe_once, _real_copy
from shared.utils.memory import GIB


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, vocab)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measured_peak_bytes(model: nn.Module, batch: int, seq_len: int, vocab: int) -> int:
    """Peak bytes of a steady-state AdamW training step on CPU, measured by the torch profiler.

    A first step allocates the optimizer state; the second is profiled. The profiler records every
    allocation and free of torch's CPU allocator; summing them in time order gives the peak above what
    existed before, and the bytes that existed before (weights, optimizer state, the batch) are added.
    """
    from torch._C._profiler import _EventType

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq_len))
    y = torch.randint(0, vocab, (batch, seq_len))

    def step():
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, vocab), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    before = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers()) + _tensor_bytes([x, y])
    before += _tensor_bytes(v for state in opt.state.values() for v in state.values())
    before += _tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    assert len(allocations) > 100, "the profiler recorded no allocations; the measurement is void"
    current = peak = 0
    for _, delta in sorted(allocations):
        current += delta
        peak = max(peak, current)
    return before + peak


# (vocab, dim, layers, heads, seq_len, batch): peaks of ~90 MB and ~230 MB
SIZES = [(8192, 128, 2, 4, 128, 4), (8192, 256, 4, 4, 128, 8)]


@pytest.mark.parametrize("size", SIZES, ids=["small", "larger"])
def test_estimate_within_25_percent_of_measured_peak(size):
    vocab, dim, layers, heads, seq_len, batch = size
    torch.manual_seed(0)
    model = TinyGPT(vocab, dim, layers, heads, seq_len)
    estimate = estimate_training_memory(model, batch, seq_len, optimizer="adamw")
    measured = measured_peak_bytes(model, batch, seq_len, vocab)
    ratio = estimate.total / measured
    assert 0.75 <= ratio <= 1.25, f"estimate {estimate.describe()} vs measured {measured / 2**20:.1f} MiB"


def test_meta_probe_matches_a_real_cpu_probe():
    model = TinyGPT(2048, 96, 2, 4, 64)
    meta = profile_activations(model, 64)
    real = _probe_once(_real_copy(model), "cpu", lambda: torch.zeros(1, 64, dtype=torch.long), None, 2048)
    assert meta.probe_device == "meta"
    assert meta.saved_bytes == pytest.approx(real.saved_bytes, rel=0.01)
    assert meta.output_bytes == real.output_bytes == 64 * 2048 * 4


def test_activation_accounting_is_exact_for_an_mlp():
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    prof = profile_activations(mlp, 1, example_input_fn=lambda b: torch.zeros(b, 64))
    # Linear saves its input (64 floats); ReLU saves its output, which the second Linear also saves
    # (one storage, counted once). The output (10 floats) is held once plus two gradient buffers.
    assert prof.saved_bytes == (64 + 256) * 4
    assert prof.per_sample == (64 + 256) * 4 + 3 * 10 * 4


class DataDependent(nn.Module):
    """Uses .item(), which meta tensors cannot answer: the probe must fall back to a real CPU run."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.head = nn.Linear(16, 100)

    def forward(self, idx):
        h = self.embed(idx)
        if h.abs().sum().item() >= 0:
            h = torch.tanh(h)
        return self.head(h)


def test_model_that_cannot_run_on_meta_falls_back_to_cpu():
    model = DataDependent()
    prof = profile_activations(model, 8)
    assert prof.probe_device == "cpu"
    assert prof.output_bytes == 8 * 100 * 4
    assert all(p.grad is None for p in model.parameters())  # the caller's model is untouched


def test_components_follow_the_optimizer():
    model = TinyGPT(1024, 64, 1, 2, 32)
    weights = sum(p.numel() * 4 for p in model.parameters())
    adamw = estimate_training_memory(model, 2, 32, optimizer="adamw")
    sgd = estimate_training_memory(model, 2, 32, optimizer="sgd")
    assert adamw.weights == adamw.grads == weights
    assert adamw.optimizer_state == 2 * weights and sgd.optimizer_state == weights
    custom = estimate_training_memory(model, 2, 32, optimizer_state_per_param=0)
    assert custom.optimizer_state == 0
    with pytest.raises(InvalidSpecError, match="optimizer"):
        estimate_training_memory(model, 2, 32, optimizer="rmsprop-of-the-future")


def test_activations_scale_linearly_with_batch():
    model = TinyGPT(1024, 64, 1, 2, 32)
    one = estimate_training_memory(model, 1, 32)
    five = estimate_training_memory(model, 5, 32, extra_bytes_per_sample=1000)
    assert five.activations == 5 * one.activations
    assert five.extra == 5000
    assert five.total == five.weights + five.grads + five.optimizer_state + five.activations + five.extra


@pytest.fixture(scope="module")
def meta_gpt():
    # Checklist-sized vocabulary on meta: sizes are real, nothing is allocated.
    with torch.device("meta"):
        return TinyGPT(50257, 256, 4, 4, 256)


def _fits(model, batch, vram_gb, **kw):
    est = estimate_training_memory(model, batch, 256, **kw)
    return est.total <= 0.85 * vram_gb * GIB


def test_batch_size_contract(meta_gpt):
    previous = 0
    for vram in (1, 2, 4, 8, 16, 80):
        batch, acc = calculate_safe_batch_size(meta_gpt, vram, seq_len=256, target_batch_size=32)
        assert 1 <= batch <= 32
        assert batch * acc >= 32 and (acc - 1) * batch < 32  # enough steps, and no more than needed
        assert batch >= previous  # monotonic in VRAM
        assert _fits(meta_gpt, batch, vram)
        if batch < 32:
            assert not _fits(meta_gpt, batch + 1, vram)  # the largest batch that fits
        previous = batch
    assert previous == 32  # an 80 GiB card runs the whole target batch


def test_extra_bytes_per_sample_lowers_the_batch(meta_gpt):
    plain, _ = calculate_safe_batch_size(meta_gpt, 4, seq_len=256)
    with_state, acc = calculate_safe_batch_size(meta_gpt, 4, seq_len=256, extra_bytes_per_sample=64 * 2**20)
    assert with_state < plain
    assert with_state * acc >= 32


def test_insufficient_memory_names_the_numbers(meta_gpt):
    with pytest.raises(InsufficientMemoryError) as err:
        calculate_safe_batch_size(meta_gpt, 0.1, seq_len=256)
    assert "of 0.1 GiB" in str(err.value)  # the device size, next to the needed and budgeted GiB
    assert err.value.required_bytes > err.value.budget_bytes
    assert "seq_len" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"device_vram_gb": 0}, "device_vram_gb"),
        ({"device_vram_gb": -6}, "device_vram_gb"),
        ({"device_vram_gb": math.nan}, "device_vram_gb"),
        ({"device_vram_gb": 6, "seq_len": 0}, "seq_len"),
        ({"device_vram_gb": 6, "target_batch_size": 0}, "target_batch_size"),
        ({"device_vram_gb": 6, "safety_fraction": 1.5}, "safety_fraction"),
        ({"device_vram_gb": 6, "extra_bytes_per_sample": -1}, "extra_bytes_per_sample"),
    ],
)
def test_invalid_arguments_name_the_field(meta_gpt, kwargs, field):
    with pytest.raises(InvalidSpecError) as err:
        calculate_safe_batch_size(meta_gpt, **kwargs)
    assert err.value.field == field


def test_checklist_dummy_linear_gets_the_full_target_batch():
    # The checklist's own call: calculate_safe_batch_size(nn.Linear(512, 512), 6)
    batch, acc = calculate_safe_batch_size(nn.Linear(512, 512), 6)
    assert (batch, acc) == (32, 1)
    est = estimate_training_memory(nn.Linear(512, 512), 1, 512)
    # input (512 x 512 floats) saved by the Linear + output held + two gradient buffers of it
    assert est.activations == 512 * 512 * 4 * 4


class Opaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 8)

    def forward(self, x):
        return self.inner(x)


def test_model_with_unknowable_input_is_rejected_with_the_way_out():
    with pytest.raises(InvalidSpecError) as err:
        calculate_safe_batch_size(Opaque(), 6)
    assert err.value.field == "example_input_fn"


def test_logits_that_do_not_match_the_vocabulary_are_reported(caplog):
    model = TinyGPT(1024, 32, 1, 2, 16)
    with caplog.at_level("WARNING", logger="shared.utils.activation_probe"):
        wrong = profile_activations(model, 16, vocab_size=999)
    right = profile_activations(model, 16)
    assert "vocab_size=999" in caplog.text
    assert wrong.saved_bytes < right.saved_bytes  # cross-entropy's log-probs were not counted
