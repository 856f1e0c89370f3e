"""The memory estimate against CUDA's own peak counter (runs only where a CUDA device is present).

On CUDA the caching allocator counts every byte handed out (`max_memory_allocated`), which is the
number `calculate_safe_batch_size` has to keep under the card's memory; the fused attention kernels and
AdamW's foreach path differ from CPU, so this is the check that the estimate holds where it matters.
"""

import gc

import pytest
import torch
import torch.nn.functional as F

from shared.utils import calculate_safe_batch_size, estimate_training_memory

from test_memory_estimate import TinyGPT  # noqa: E402  (same directory; pytest puts it on sys.path)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (vocab, dim, layers, heads, seq_len, batch): the two CPU sizes and the checklist's default shape
CUDA_SIZES = [(8192, 128, 2, 4, 128, 4), (8192, 256, 4, 4, 128, 8), (50257, 512, 8, 8, 512, 8)]


def cuda_library_bytes() -> int:
    """Bytes the CUDA libraries hold once per process (cuBLAS/cuBLASLt workspaces: ~32 MiB per stream
    on Hopper), measured after a throwaway matmul forward+backward with nothing else left alive. They
    are not the model's; with the CUDA context they are what `safety_fraction` leaves room for."""
    gc.collect()  # earlier tests' models must not count as floor
    a = torch.randn(64, 64, device="cuda", requires_grad=True)
    (a @ a).sum().backward()
    del a
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def cuda_peak_bytes(model, batch: int, seq_len: int, vocab: int) -> int:
    """Peak bytes of a steady-state AdamW step (the second; the first allocates the optimizer state),
    above the per-process library floor."""
    floor = cuda_library_bytes()
    model = model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq_len), device="cuda")
    y = torch.randint(0, vocab, (batch, seq_len), device="cuda")

    def step():
        logits = model(x)  # held through backward, as a training loop that logs or reuses it does
        loss = F.cross_entropy(logits.view(-1, vocab), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - floor


@pytest.mark.parametrize("size", CUDA_SIZES, ids=["small", "larger", "checklist-default"])
def test_estimate_within_25_percent_of_cuda_peak(size):
    vocab, dim, layers, heads, seq_len, batch = size
    torch.manual_seed(0)
    model = TinyGPT(vocab, dim, layers, heads, seq_len)
    estimate = estimate_training_memory(model, batch, seq_len)
    measured = cuda_peak_bytes(model, batch, seq_len, vocab)
    ratio = estimate.total / measured
    assert 0.75 <= ratio <= 1.25, f"estimate {estimate.describe()} vs CUDA peak {measured / 2**20:.1f} MiB"


def test_chosen_batch_really_fits_the_budget():
    # Ask for the batch that fits a 2 GiB budget, then run it and read the real peak.
    vocab, dim, layers, heads, seq_len = 50257, 512, 8, 8, 512
    torch.manual_seed(0)
    model = TinyGPT(vocab, dim, layers, heads, seq_len)
    batch, _ = calculate_safe_batch_size(model, 2.0, seq_len=seq_len, target_batch_size=32, safety_fraction=1.0)
    assert batch >= 1
    floor = cuda_library_bytes()
    assert cuda_peak_bytes(model, batch, seq_len, vocab) + floor <= 2.0 * 2**30
