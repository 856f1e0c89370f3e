"""TRMTitansMAG: a causal language model that thinks by recursion (TRM, arXiv 2510.04871) with Titans
memory-as-gate layers (arXiv 2501.00663). Our extension of TRM to causal LM, labelled as such.

Legend: B batch, L length, d hidden width, V vocabulary.

One small shared net (num_layers MAG blocks) is applied recursively. Per supervision step, T cycles; in each
the latent z is updated n times from (x, y, z), then the answer y once from (y, z) — T·(n+1) net calls, the
first T−1 cycles without gradient, so only the last n+1 calls carry gradients. Deep supervision: up to N_sup
steps, y and z carried detached between them. A halting head reads y and predicts "the next-token prediction
here is correct" (BCE on a detached target, so it learns); at inference a position halts once
p_halt ≥ act_threshold (higher threshold = thinks longer) or at N_sup, and halted positions stop changing.
Per-token halting is our extension (TRM halts per example). Every net call restarts each layer's memory
from its learned initial weights, so no pass can read a token after t through the memory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from shared.model.attention import SlidingWindowAttention
from shared.model.config import TRMTitansMAGConfig
from shared.model.memory import NeuralMemory

IGNORE_INDEX = -100


def tag(param: nn.Parameter, role: str) -> None:
    """The role the optimizer routes by (shared.optim): 'muon' for hidden matrices, else AdamW roles."""
    setattr(param, "af_role", role)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MAGBlock(nn.Module):
    """x + SWA(norm x) ⊙ σ(W_g · Memory(norm x)), then x + MLP(norm x).

    `streams` (the Quiet-STaR hook, shared/model/thoughts.py; None on the normal path): an object whose
    `memory(memory_module, h) -> reads` and `attention(attn_module, h) -> out` replace the two token-mixing
    calls; everything else in the block is per token. Thought streams use it to give appended tokens their own
    attention pattern and a read-only memory."""

    def __init__(self, cfg: TRMTitansMAGConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.norm1 = RMSNorm(d)
        self.attn = SlidingWindowAttention(d, cfg.num_heads, cfg.window, cfg.persistent_tokens, cfg.rope_base,
                                           cfg.dropout)
        self.memory = NeuralMemory(d, cfg.memory_dim, cfg.ltm_slots, cfg.active_ltm_slots, cfg.memory_chunk_size,
                                   cfg.memory_theta_max)
        self.gate = nn.Linear(cfg.memory_dim, d)
        self.norm2 = RMSNorm(d)
        self.up = nn.Linear(d, cfg.mlp_ratio * d, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * d, d, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, streams=None) -> Tensor:
        h = self.norm1(x)
        if streams is None:
            read, _ = self.memory(h)                               # fresh memory every call
            mixed = self.attn(h) * torch.sigmoid(self.gate(read))
        else:
            read = streams.memory(self.memory, h)
            mixed = streams.attention(self.attn, h) * torch.sigmoid(self.gate(read))
        x = x + F.dropout(mixed, self.dropout, self.training)
        return x + F.dropout(self.down(F.silu(self.up(self.norm2(x)))), self.dropout, self.training)


class RecursiveNet(nn.Module):
    """The shared net: one call = one pass along the layer plan (what the recursion counts).

    plan None: every MAG block once, in order. A plan [[slot, scale], …] (config.layer_plan, validated there)
    applies x = layers[slot](scale · x) per step — the data-flow path DFS merging evolves. `streams`: passed
    to every block (MAGBlock)."""

    def __init__(self, cfg: TRMTitansMAGConfig):
        super().__init__()
        self.layers = nn.ModuleList(MAGBlock(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: Tensor, plan: list | None = None, streams=None) -> Tensor:
        extra = () if streams is None else (streams,)   # the normal path calls exactly as before
        if plan is None:
            for layer in self.layers:
                x = layer(x, *extra)
            return x
        for slot, scale in plan:
            x = self.layers[slot](x if scale == 1.0 else scale * x, *extra)
        return x


@dataclass
class TRMOutput(CausalLMOutput):
    halting_steps: Tensor | None = None    # (B, L) supervision steps each position executed
    halt_logits: Tensor | None = None      # (B, L)
    lm_loss: Tensor | None = None
    halt_loss: Tensor | None = None


class TRMTitansMAG(PreTrainedModel, GenerationMixin):
    config_class = TRMTitansMAGConfig
    base_model_prefix = "trm"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "embed.weight"}
    _supports_cache_class = False

    def __init__(self, config: TRMTitansMAGConfig | None = None, **kwargs):
        if config is None:
            config = TRMTitansMAGConfig(**kwargs)   # the checklist's TRMTitansMAG(num_layers=8, …) form
        elif kwargs:
            raise TypeError(f"pass either a config or keyword arguments, not both: {sorted(kwargs)}")
        super().__init__(config)
        d = config.hidden_dim
        self.embed = nn.Embedding(config.vocab_size, d)
        self.net = RecursiveNet(config)
        self.y_init = nn.Parameter(torch.zeros(d))
        self.z_init = nn.Parameter(torch.randn(d) * 0.02)
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.halt_head = nn.Linear(d, 1)
        self.post_init()
        self.tag_roles()
        self.generation_config.use_cache = False

    # -- Hugging Face plumbing --
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and module is not self.halt_head:
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs) -> dict:
        return {"input_ids": input_ids}     # no cache: every step recomputes the causal recursion

    def tag_roles(self) -> None:
        """Tag every parameter with its optimizer role. Called again after anything that creates new
        Parameter objects (loading, deepcopy, resizing): torch drops Python attributes on those."""
        for name, p in self.named_parameters(remove_duplicate=False):
            leaf = name.rsplit(".", 1)[-1]
            if name.startswith(("embed.", "lm_head.")):
                role = "embedding"            # tied: one tensor, never Muon
            elif name.startswith("halt_head."):
                role = "head" if leaf == "weight" else "bias"
            elif name in ("y_init", "z_init") or leaf == "persistent":
                role = "persistent"
            elif "norm" in name:
                role = "norm"
            elif leaf in ("w1_init", "w2_init"):
                role = "memory_init"
            elif ".to_rates." in name:
                role = "gate" if leaf == "weight" else "bias"
            elif leaf == "bias":
                role = "bias"
            else:
                role = "muon"                 # attention, MLP, memory projections, memory->gate
            tag(p, role)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.tag_roles()
        return model

    def __deepcopy__(self, memo):
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        clone.tag_roles()   # Parameter.__deepcopy__ drops the role attributes
        return clone

    def resize_token_embeddings(self, *args, **kwargs):
        out = super().resize_token_embeddings(*args, **kwargs)
        self.tag_roles()  # the new embedding tensor needs its role for the optimizer
        return out

    def qk_clip_modules(self) -> list[SlidingWindowAttention]:
        return [layer.attn for layer in self.net.layers]

    # -- the recursion --
    def _cycle(self, x: Tensor, y: Tensor, z: Tensor, streams=None) -> tuple[Tensor, Tensor]:
        plan = self.config.layer_plan   # read per call, like act_threshold
        extra = () if streams is None else (streams,)   # the normal path calls net(h, plan) as before
        for _ in range(self.config.n_latent_steps):
            z = self.net(x + y + z, plan, *extra)
        return self.net(y + z, plan, *extra), z

    def supervision_step(self, x: Tensor, y: Tensor, z: Tensor, streams=None) -> tuple[Tensor, Tensor]:
        """T cycles from (y, z); the first T−1 without gradient. Returns the new (y, z). `streams`: the
        thought-stream hook every block receives (MAGBlock; shared/model/thoughts.py), None normally."""
        with torch.no_grad():
            for _ in range(self.config.t_cycles - 1):
                y, z = self._cycle(x, y, z, streams)
        return self._cycle(x, y, z, streams)

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.y_init.expand_as(x), self.z_init.expand_as(x)

    def heads(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.lm_head(self.norm(y)), self.halt_head(y).squeeze(-1)

    @staticmethod
    def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
        """Next-token loss: position t predicts labels[t + 1] (the shift the earlier implementation lacked)."""
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)

    @staticmethod
    def halt_loss(logits: Tensor, halt_logits: Tensor, labels: Tensor) -> Tensor:
        target = labels[:, 1:]
        valid = target != IGNORE_INDEX
        correct = (logits[:, :-1].argmax(-1) == target).float().detach()
        per = F.binary_cross_entropy_with_logits(halt_logits[:, :-1].float(), correct, reduction="none")
        return (per * valid).sum() / valid.sum().clamp(min=1)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, attention_mask: Tensor | None = None,
                n_sup: int | None = None, act_threshold: float | None = None, **unused) -> TRMOutput:
        """Train mode: a fixed N_sup steps (the last one with gradient), loss when labels are given.
        Eval mode: per-token ACT halting; loss on the final logits when labels are given."""
        x = self.embed(input_ids)                                       # (B, L, d)
        y, z = self.initial_state(x)
        steps = n_sup or self.config.n_sup
        if self.training:
            # Fine-tuning form (baking, RL, recovery): the first N_sup − 1 steps refine (y, z) without
            # gradient and the last step is trained. Deep supervision proper — a backward and an optimizer
            # step per supervision step — is the Cognate trainer's loop over `supervision_step`; doing it
            # here in one graph would keep N_sup steps of activations alive at once.
            with torch.no_grad():
                for _ in range(steps - 1):
                    y, z = self.supervision_step(x, y, z)
            y, z = self.supervision_step(x, y.detach(), z.detach())
            logits, halt_logits = self.heads(y)
            executed = torch.full(input_ids.shape, float(steps), device=x.device)
            if labels is None:
                return TRMOutput(logits=logits, halting_steps=executed, halt_logits=halt_logits)
            lm_loss = self.lm_loss(logits, labels)
            halt_loss = self.halt_loss(logits, halt_logits, labels)
            return TRMOutput(loss=lm_loss + halt_loss, logits=logits, halting_steps=executed,
                             halt_logits=halt_logits, lm_loss=lm_loss, halt_loss=halt_loss)
        threshold = self.config.act_threshold if act_threshold is None else act_threshold
        # compare in logit space: p ≥ 1 can happen in floating point, but a threshold of 1 means "never halt"
        halt_at = float("inf") if threshold >= 1.0 else float(torch.logit(torch.tensor(threshold, dtype=torch.float64)))
        halted = torch.zeros(input_ids.shape, dtype=torch.bool, device=x.device)
        executed = torch.zeros(input_ids.shape, device=x.device)
        for _ in range(steps):
            y_new, z_new = self.supervision_step(x, y, z)
            keep = halted.unsqueeze(-1)
            y, z = torch.where(keep, y, y_new), torch.where(keep, z, z_new)
            executed = executed + (~halted).float()
            logits, halt_logits = self.heads(y)
            halted = halted | (halt_logits >= halt_at)
            if bool(halted.all()):
                break
        logits, halt_logits = self.heads(y)
        loss = self.lm_loss(logits, labels) if labels is not None else None
        return TRMOutput(loss=loss, logits=logits, halting_steps=executed, halt_logits=halt_logits)
