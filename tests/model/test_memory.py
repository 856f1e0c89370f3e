"""The neural memory: parallel chunked form == naive loops, streaming == one-shot, window invariance with
θ = 0 (and dependence with θ > 0), recall of stored pairs, capacity masking."""

import pytest
import torch
import torch.nn.functional as F

from shared.model.memory import memory_scan, naive_memory
from tests.model.helpers import tiny_config

F64 = torch.float64


def inputs(b=2, length=17, d=4, s=6, active=4, seed=0, theta_scale=0.1):
    g = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(b, length, d, generator=g, dtype=F64), dim=-1)
    v = torch.randn(b, length, d, generator=g, dtype=F64)
    q = F.normalize(torch.randn(b, length, d, generator=g, dtype=F64), dim=-1)
    eta = torch.rand(b, length, generator=g, dtype=F64)
    theta = torch.rand(b, length, generator=g, dtype=F64) * theta_scale
    alpha = torch.rand(b, length, generator=g, dtype=F64) * 0.3
    w1, w2 = torch.randn(s, d, generator=g, dtype=F64), torch.randn(d, s, generator=g, dtype=F64)
    mask = torch.zeros(s, dtype=F64)
    mask[:active] = 1
    return k, v, q, eta, theta, alpha, w1, w2, mask


@pytest.mark.parametrize("chunk", [1, 3, 4, 17, 32])
def test_parallel_chunks_equal_the_naive_loop_with_chunk_start_gradients(chunk):
    args = inputs()
    fast, fs = memory_scan(*args, chunk)
    slow, ss = naive_memory(*args, chunk)
    assert torch.allclose(fast, slow, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(fs, ss))


def test_chunk_one_is_online_gradient_descent_and_differs_from_larger_chunks():
    args = inputs()
    one, _ = memory_scan(*args, 1)
    k, v, q, eta, theta, alpha, w1, w2, mask = args
    # an independent per-token loop with autograd gradients at the current weights
    d1, d2 = torch.zeros(2, 6, 4, dtype=F64), torch.zeros(2, 4, 6, dtype=F64)
    s1, s2 = torch.zeros_like(d1), torch.zeros_like(d2)
    outs = []
    for t in range(k.shape[1]):
        W1 = (w1 + d1).clone().requires_grad_(True); W2 = (w2 + d2).clone().requires_grad_(True)
        a = F.silu(torch.einsum("bsd,bd->bs", W1, k[:, t])) * mask
        loss = ((torch.einsum("bds,bs->bd", W2, a) - v[:, t]) ** 2).sum()
        g1, g2 = torch.autograd.grad(loss, (W1, W2))
        step = (theta[:, t] / (1 + a.detach().pow(2).sum(-1)))[:, None, None]   # the normalised-LMS step
        s1 = eta[:, t, None, None] * s1 - step * g1
        s2 = eta[:, t, None, None] * s2 - step * g2
        d1 = (1 - alpha[:, t, None, None]) * d1 + s1
        d2 = (1 - alpha[:, t, None, None]) * d2 + s2
        hq = F.silu(torch.einsum("bsd,bd->bs", w1 + d1, q[:, t])) * mask
        outs.append(torch.einsum("bds,bs->bd", w2 + d2, hq))
    assert torch.allclose(one, torch.stack(outs, 1), atol=1e-10)
    four, _ = memory_scan(*args, 4)
    assert not torch.allclose(one, four, atol=1e-6)


def test_streaming_equals_one_shot():
    args = inputs(length=24)
    whole, final = memory_scan(*args, 4)
    k, v, q, eta, theta, alpha, w1, w2, mask = args
    first, state = memory_scan(k[:, :8], v[:, :8], q[:, :8], eta[:, :8], theta[:, :8], alpha[:, :8], w1, w2, mask, 4)
    second, end = memory_scan(k[:, 8:], v[:, 8:], q[:, 8:], eta[:, 8:], theta[:, 8:], alpha[:, 8:], w1, w2, mask, 4,
                              state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(end, final))


def test_masked_units_never_change_and_never_contribute():
    k, v, q, eta, theta, alpha, w1, w2, mask = inputs()
    out, state = memory_scan(k, v, q, eta, theta, alpha, w1, w2, mask, 4)
    assert torch.count_nonzero(state.d1[:, 4:]) == 0 and torch.count_nonzero(state.d2[:, :, 4:]) == 0
    w1b, w2b = w1.clone(), w2.clone()
    w1b[4:] = torch.randn(2, 4, dtype=F64) * 100
    w2b[:, 4:] = torch.randn(4, 2, dtype=F64) * 100
    out2, _ = memory_scan(k, v, q, eta, theta, alpha, w1b, w2b, mask, 4)
    assert torch.equal(out, out2)


@pytest.mark.parametrize("theta_max", [0.0, 1.0])
def test_a_token_older_than_the_window_reaches_position_t_only_through_a_learning_memory(theta_max):
    from shared.model.modeling import MAGBlock

    torch.manual_seed(1)
    block = MAGBlock(tiny_config(memory_theta_max=theta_max, window=3)).double()
    with torch.no_grad():
        block.memory.to_rates.bias[1] = 1.0
    x = torch.randn(1, 12, 32, dtype=F64)
    changed = x.clone()
    changed[:, 2] += 1.0                         # position 2 is older than the window at t = 11
    same = torch.equal(block(x)[:, 11], block(changed)[:, 11])
    assert same == (theta_max == 0.0)


def test_recall_of_stored_pairs_beats_unseen_keys_and_improves_with_capacity():
    g = torch.Generator().manual_seed(3)
    d, pairs, reps = 8, 16, 12
    keys = F.normalize(torch.randn(1, pairs, d, generator=g, dtype=F64), dim=-1)
    values = torch.randn(1, pairs, d, generator=g, dtype=F64)
    unseen = F.normalize(torch.randn(1, pairs, d, generator=g, dtype=F64), dim=-1)
    k = keys.repeat(1, reps, 1)
    v = values.repeat(1, reps, 1)
    length = k.shape[1]
    eta, alpha = torch.zeros(1, length, dtype=F64), torch.zeros(1, length, dtype=F64)
    theta = torch.full((1, length), 0.5, dtype=F64)
    errors = []
    for slots in (4, 16, 64):
        w1 = torch.randn(64, d, generator=torch.Generator().manual_seed(5), dtype=F64)
        w2 = torch.zeros(d, 64, dtype=F64)
        mask = torch.zeros(64, dtype=F64)
        mask[:slots] = 1
        _, state = memory_scan(k, v, k, eta, theta, alpha, w1, w2, mask, 1)
        w1t, w2t = w1 + state.d1[0], w2 + state.d2[0]

        def read(keys_):
            return torch.einsum("ds,bls->bld", w2t, F.silu(torch.einsum("sd,bld->bls", w1t, keys_)) * mask)

        stored = (read(keys) - values).pow(2).sum(-1).mean().item()
        fresh = (read(unseen) - values).pow(2).sum(-1).mean().item()
        assert stored < fresh
        errors.append(stored)
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("chunk", [1, 4, 17])
def test_gradients_of_the_parallel_scan_equal_the_naive_loop(chunk):
    leaves = [t.clone().requires_grad_(True) for t in inputs(length=13)[:8]]
    mask = inputs()[8]
    state_in = None
    grads = []
    for fn in (memory_scan, naive_memory):
        out, state = fn(*leaves, mask, chunk, state_in)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum() + sum(
            (s * (i + 1)).sum() for i, s in enumerate(state))
        grads.append(torch.autograd.grad(loss, leaves))
    for name, fast, slow in zip("k v q eta theta alpha w1 w2".split(), *grads):
        assert torch.allclose(fast, slow, atol=1e-10), name


def test_fused_silu_derivative_is_differentiable_in_both_arguments():
    from shared.model.memory import _SiluGradMul

    g = torch.randn(3, 5, dtype=F64, requires_grad=True)
    h = (torch.randn(3, 5, dtype=F64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(_SiluGradMul.apply, (g, h))
    s = torch.sigmoid(h)
    assert torch.allclose(_SiluGradMul.apply(g, h), g * s * (1 + h * (1 - s)))


@pytest.mark.parametrize("active", [0, 3, 6])
def test_module_runs_only_the_active_prefix_with_the_same_reads_and_gradients(active):
    from shared.model.memory import NeuralMemory

    torch.manual_seed(0)
    mem = NeuralMemory(8, 4, 6, active, 3, 1.0).double()
    x = torch.randn(2, 7, 8, dtype=F64)
    assert mem.active_prefix() == active
    out, state = mem(x)
    assert state.d1.shape == (2, active, 4)
    # the reference: the full-width scan with the mask
    k, v, q = F.normalize(mem.to_k(x), dim=-1), mem.to_v(x), F.normalize(mem.to_q(x), dim=-1)
    ref, _ = memory_scan(k, v, q, *mem.rates(x), mem.w1_init, mem.w2_init, mem.mask, 3)
    assert torch.allclose(out, ref, atol=1e-12)
    out.sum().backward()
    assert torch.count_nonzero(mem.w1_init.grad[active:]) == 0
    assert torch.count_nonzero(mem.w2_init.grad[:, active:]) == 0
    assert (torch.count_nonzero(mem.w1_init.grad[:active]) > 0) == (active > 0)


def test_a_mask_that_is_not_a_prefix_takes_the_masked_path_and_edits_are_seen():
    from shared.model.memory import NeuralMemory

    torch.manual_seed(0)
    mem = NeuralMemory(8, 4, 6, 6, 3, 1.0).double()
    x = torch.randn(1, 5, 8, dtype=F64)
    with torch.no_grad():
        mem.mask.copy_(torch.tensor([1, 0, 1, 0, 1, 0], dtype=F64))
    assert mem.active_prefix() is None
    out, state = mem(x)
    assert state.d1.shape == (1, 6, 4) and torch.count_nonzero(state.d1[:, 1::2]) == 0
    mem.mask[2:] = 0                                  # in place: seen through the tensor's version counter
    assert mem.active_prefix() == 1
    mem.load_state_dict({**mem.state_dict(), "mask": torch.tensor([1, 1, 1, 1, 0, 0], dtype=F64)})
    assert mem.active_prefix() == 4


def test_checkpointing_is_used_above_the_size_threshold_and_changes_nothing(monkeypatch):
    import shared.model.memory as memory_module
    from shared.model.memory import NeuralMemory, scan_saved_bytes

    torch.manual_seed(0)
    mem = NeuralMemory(8, 4, 6, 6, 3, 1.0).double()
    x = torch.randn(2, 7, 8, dtype=F64, requires_grad=True)
    calls = []
    real = memory_module.checkpoint
    monkeypatch.setattr(memory_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = []
    for threshold in (scan_saved_bytes(2, 7, 6, 4, 3, 8) + 1, 0):   # just above this call's size, then 0
        monkeypatch.setattr(memory_module, "CHECKPOINT_MIN_BYTES", threshold)
        out, _ = mem(x)
        results.append((out, torch.autograd.grad(out.square().sum(), [x, mem.w1_init, mem.to_k.weight])))
    assert len(calls) == 1                                            # only the second call checkpointed
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(results[0][1], results[1][1]))
