"""The baseline of bench/model_bench.py: a plain causal transformer (pre-norm, causal SDPA, 4x SiLU MLP,
RMSNorm, tied embeddings), sized by layer count to match a model's parameter count."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        return x + self.down(F.silu(self.up(self.n2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(d)

    def forward(self, ids, labels=None):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x)
        logits = self.norm(x) @ self.embed.weight.t()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
        return loss


def matched(vocab: int, d: int, heads: int, params: int) -> PlainGPT:
    """The layer count whose parameter count is closest to `params`."""
    per_layer = 12 * d * d + 2 * d
    layers = max(1, round((params - vocab * d - d) / per_layer))
    return PlainGPT(vocab, d, layers, heads)
