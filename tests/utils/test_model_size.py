"""get_model_size / size_category: unique storage counting, dtypes, buffers, meta models, boundaries."""

import pytest
import torch
from torch import nn

from shared.errors import InvalidSpecError
from shared.utils import get_model_size, size_category


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: one storage

    def forward(self, idx):
        return self.head(self.mix(self.embed(idx)))


def test_checklist_dummy_linear():
    info = get_model_size(nn.Linear(512, 512))
    assert {"params", "size_mb", "size_category"} <= info.keys()
    assert info["params"] == 512 * 512 + 512
    assert info["trainable_params"] == info["params"]
    assert info["size_mb"] == pytest.approx((512 * 512 + 512) * 4 / 2**20)
    assert info["size_category"] == "tiny"


def test_tied_weights_counted_once():
    model = TiedLM(vocab=1000, dim=64)
    expected = 1000 * 64 + (64 * 64 + 64)
    info = get_model_size(model)
    assert info["params"] == expected
    assert info["size_mb"] == pytest.approx(expected * 4 / 2**20)


def test_ties_made_through_shared_storage_are_counted_once():
    a = nn.Linear(32, 32, bias=False)
    b = nn.Linear(32, 32, bias=False)
    b.weight = nn.Parameter(a.weight.data)  # a different Parameter object on the same storage
    info = get_model_size(nn.Sequential(a, b))
    assert info["params"] == 32 * 32


def test_dtype_changes_bytes_not_count():
    fp32 = get_model_size(TiedLM())
    bf16 = get_model_size(TiedLM().to(torch.bfloat16))
    assert bf16["params"] == fp32["params"]
    assert bf16["size_mb"] == pytest.approx(fp32["size_mb"] / 2)


def test_buffers_and_frozen_parameters():
    model = nn.Sequential(nn.Linear(10, 10), nn.BatchNorm1d(10))
    model[0].requires_grad_(False)
    info = get_model_size(model)
    assert info["params"] == 110 + 20
    assert info["trainable_params"] == 20
    # running_mean + running_var (fp32) + num_batches_tracked (int64)
    assert info["buffers_bytes"] == 10 * 4 + 10 * 4 + 8
    assert info["size_mb"] == pytest.approx((130 * 4 + 88) / 2**20)


def test_meta_model_matches_real_model():
    real = get_model_size(TiedLM())
    with torch.device("meta"):
        meta = get_model_size(TiedLM())
    assert meta == real


def test_large_model_on_meta_needs_no_memory():
    # 3.2B parameters would need ~12 GiB if materialised; on meta only shapes exist.
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(8192, 8192, bias=False) for _ in range(48)])
    info = get_model_size(model)
    assert info["params"] == 48 * 8192 * 8192
    assert info["size_category"] == "large"
    assert info["size_mb"] == pytest.approx(48 * 8192 * 8192 * 4 / 2**20)


@pytest.mark.parametrize(
    ("params", "category"),
    [
        (0, "tiny"),
        (49_999_999, "tiny"),
        (50_000_000, "small"),
        (499_999_999, "small"),
        (500_000_000, "medium"),
        (1_999_999_999, "medium"),
        (2_000_000_000, "large"),
        (70_000_000_000, "large"),
    ],
)
def test_size_category_boundaries(params, category):
    assert size_category(params) == category


def test_size_category_rejects_negative():
    with pytest.raises(InvalidSpecError, match="params"):
        size_category(-1)
