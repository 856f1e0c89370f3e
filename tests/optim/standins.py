"""Small stand-ins for the model's side of the optimizer contracts (af_role tags, the QK-clip protocol)."""

from __future__ import annotations

import math

import torch
from torch import nn


def tag(param: nn.Parameter, role: str) -> nn.Parameter:
    setattr(param, "af_role", role)
    return param


class RMSNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.weight = tag(nn.Parameter(torch.ones(d)), "norm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class QKAttention(nn.Module):
    """Multi-head attention without q/k biases that records each head's max scaled logit (the protocol)."""

    def __init__(self, d: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.w_q = nn.Linear(d, heads * head_dim, bias=False)
        self.w_k = nn.Linear(d, heads * head_dim, bias=False)
        self.w_v = nn.Linear(d, heads * head_dim, bias=False)
        self.w_o = nn.Linear(heads * head_dim, d, bias=False)
        for lin in (self.w_q, self.w_k, self.w_v, self.w_o):
            tag(lin.weight, "muon")
        self.register_buffer("_max", torch.full((heads,), -math.inf))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.w_q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.w_k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        return q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        att = self.logits(x)
        with torch.no_grad():
            self._max = torch.maximum(self._max, att.amax(dim=(0, 2, 3)))
        v = self.w_v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        return self.w_o(out)

    def max_logits(self) -> torch.Tensor:
        return self._max

    def reset_max_logits(self) -> None:
        self._max.fill_(-math.inf)

    @torch.no_grad()
    def scale_qk_heads(self, scale: torch.Tensor) -> None:
        for lin in (self.w_q, self.w_k):
            lin.weight.view(self.heads, self.head_dim, -1).mul_(scale.view(-1, 1, 1))


class StandInLM(nn.Module):
    """Every role the contract names, in shapes that would fool an ndim-based router."""

    def __init__(self, vocab: int = 32, d: int = 16, heads: int = 2, persistent: int = 3, mem: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        tag(self.embed.weight, "embedding")  # 2-D
        self.attn = QKAttention(d, heads, d // heads)
        self.norm = RMSNorm(d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        tag(self.up.weight, "muon"), tag(self.down.weight, "muon")
        tag(self.up.bias, "bias"), tag(self.down.bias, "bias")
        self.gate = tag(nn.Parameter(torch.zeros(d)), "gate")
        self.persistent = tag(nn.Parameter(torch.randn(persistent, d) * 0.02), "persistent")  # 2-D
        self.memory_init = tag(nn.Parameter(torch.randn(d, mem) * 0.1), "memory_init")  # 2-D
        self.temperature = tag(nn.Parameter(torch.tensor(1.0)), "scalar")
        self.head = nn.Linear(d, vocab, bias=False)
        tag(self.head.weight, "head")  # 2-D

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.persistent.mean(0)
        x = x + self.attn(x)
        mem = torch.tanh(x @ self.memory_init) @ self.memory_init.T
        x = x + torch.sigmoid(self.gate) * mem
        x = x + self.down(torch.relu(self.up(self.norm(x))))
        return self.head(x) * self.temperature


def lm_loss(model: StandInLM, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.head.out_features, (2, 6), generator=g)
    logits = model(ids)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
