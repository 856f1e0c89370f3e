"""Prompt Baking (Phase 3b, step 1): teach the model to write `[thinking] … [/endthinking]` and an answer.

**Training text.** One example (a reasoning-data record) is the token sequence

    encode(f"{prompt}\\n") + encode(reasoning) + encode(f"\\nAnswer: {answer}") + [eos]

i.e. the text `{prompt}\\n{reasoning}\\nAnswer: {answer}<eos>`, with the prompt's surrounding whitespace
stripped. The three pieces are encoded separately (the reasoning starts and ends with special tokens, so
this is also how the whole text would split), so the prompt's ids are exactly what the evaluator feeds the
model before it samples (`encode_prompt`). eos is the tokenizer's `eos_token_id` (required; for our
tokenizers `<|endoftext|>`): it teaches the model to stop after the answer line. Padding uses the
tokenizer's `pad_token_id` (eos when it has none); it only fills the batch and is never a target.

**Labels.** The model shifts internally (position t predicts labels[t + 1]); labels are the input ids on
the reasoning, the answer line and eos, and IGNORE_INDEX (-100) on the prompt and the padding. So the loss
covers predicting `[thinking]` from the prompt's last token ("\\n") through eos, never a prompt token.

**Length.** No packing: one example per row, right-padded to the longest row of its batch (the model has
no attention mask and is causal, so padding after a row cannot change it; packing several examples into one
row would let one example attend to another). A row is at most the model's `max_seq_len` tokens. When an
example is longer, the prompt is cut from the left (its end, where the question usually is, and the
"\\n" boundary are kept); an example whose reasoning + answer line + eos alone do not fit beside at least
one prompt token is dropped — truncating it would teach an unclosed wrapper or a missing answer — and is
counted (`BakingResult.dropped_too_long`).

**Objectives.** `objective="sft"`: the model's own train-mode loss (shifted LM loss on the labels above +
its halting loss). `objective="kl"`: Prompt Baking's (Bhargava et al. 2024, "Prompt Baking",
arXiv:2409.13697): the teacher is a frozen deep copy of the model taken before any update (eval mode,
requires_grad False, never given to the optimizer), conditioned on a few-shot prefix of `kl_shots` training
examples in the format above (each ending in eos); the student is the model without the prefix. Every
epoch the teacher samples one continuation per training example after `prefix + {prompt}\\n` (temperature
1, its own `generate`, up to `kl_max_new_tokens`, eos included when emitted) and the loss is
KL(teacher ‖ student) = Σ_v p_T(v)(log p_T(v) − log p_S(v)) at each continuation position, averaged over
positions. The teacher's logits are computed in eval mode with all N_sup steps (act_threshold 1), the same
computation as the student's train-mode forward, so the KL measures the prefix and not halting. The loss is
pure KL: the halting loss is left out (≈ 0.6 nats of BCE beside a KL of 0.01–0.1, it raised the KL on the
tiny model). The teacher's weights are fingerprinted when it is made and checked when baking ends
(`BakingResult.teacher_unchanged`).

**Convergence** (checklist "Convergence Check"): validation after every epoch (`baking_eval`). When the best
format adherence of the planned epochs is below `spec.format_adherence_target`, every learning rate is
halved and 3 more epochs are trained (the same optimizer and its state), once. Baking returns the weights
of its best epoch — the highest format adherence, the later epoch on a tie — restoring them when a later
epoch validated lower (measured on tiny, 2026-11-26: adherence 0.03, 1.00, 1.00, 0.72 over four epochs —
epoch 3 answered "What is 2+2?" with "[thinking] <step> 6*2=6. [/endthinking]", epoch 4 with
code-like text — and another run's mitigation went 0.97, 0.97, 0.59). `converged` says whether the
returned weights' adherence reached the target. The gate itself is the phase's.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from services.quietstar.core import baking_eval
from services.quietstar.core.baking_eval import FORMAT_ADHERENCE, sample_outputs
from shared.data.special_tokens import STRATEGIES
from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.evaluation.lm import device_of
from shared.model.modeling import IGNORE_INDEX
from shared.optim import MuonGrokfast
from shared.telemetry.metric_names import BAKING_EPOCH, BAKING_LOSS
from shared.utils import NonFiniteLossError

__all__ = [
    "ANSWER_PREFIX", "BakingCheckpoint", "BakingResult", "BakingTrainer", "Encoded", "KLTeacher", "MITIGATION_EPOCHS", "OBJECTIVES",
    "bake", "encode_example", "encode_prompt", "filter_by_strategy", "format_text", "kl_batches", "kl_loss",
    "make_optimizer", "mean_kl", "pad_batch", "split_by_field", "train_more_epochs", "train_test_split",
]

log = logging.getLogger(__name__)

ANSWER_PREFIX = "Answer:"
MITIGATION_EPOCHS = 3      # the checklist's "train 3 more epochs"
MITIGATION_LR_FACTOR = 0.5  # the checklist's "optimizer.param_groups[0]['lr'] *= 0.5", applied to every group
GRAD_CLIP = 1.0
OBJECTIVES = ("sft", "kl")
_OPT_FIELDS = ("muon_lr", "adamw_lr", "weight_decay", "grokfast_alpha", "grokfast_lambda", "qk_clip_threshold",
               "kl_coefficient")

# The evaluator `bake` uses unless given one; looked up at call time, so tests can monkeypatch it here.
evaluate_baking = baking_eval.evaluate_baking


# --- examples ---------------------------------------------------------------------------------------------

def filter_by_strategy(examples: Sequence[Mapping[str, Any]], strategy: str) -> list[Mapping[str, Any]]:
    """The examples of one strategy (bare name "doubt" or its token "<doubt>"), in their order."""
    name = strategy.strip().strip("<>")
    if name not in STRATEGIES:
        raise InvalidSpecError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}", field="strategy")
    return [ex for ex in examples if ex["strategy"] == name]


def split_by_field(examples: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
    """(train, val) by each example's `split` field, as the reasoning-data artifact assigns it (by source
    item, so all strategy variants of a problem are on one side)."""
    train = [ex for ex in examples if ex.get("split") == "train"]
    val = [ex for ex in examples if ex.get("split") == "val"]
    other = len(examples) - len(train) - len(val)
    if other:
        raise InvalidSpecError(f"{other} example(s) have a split other than 'train'/'val'", field="split")
    return train, val


def train_test_split(examples: Sequence[Mapping[str, Any]], test_size: float = 0.1, *,
                     seed: int = 0) -> tuple[list, list]:
    """The checklist's split, grouped by `source_id` (an item's strategy variants stay together, so the
    val items are unseen problems): a seeded shuffle of the distinct source ids, the first
    ⌈test_size · n⌉ of them (at least 1, at most n − 1) go to val."""
    if not 0 < test_size < 1:
        raise InvalidSpecError(f"must be in (0, 1), got {test_size}", field="test_size")
    sources = sorted({str(ex.get("source_id", ex["id"])) for ex in examples})
    if len(sources) < 2:
        raise InvalidSpecError("need at least 2 source items to split", field="examples")
    random.Random(seed).shuffle(sources)
    n_val = min(len(sources) - 1, max(1, math.ceil(test_size * len(sources))))
    val_ids = set(sources[:n_val])
    train = [ex for ex in examples if str(ex.get("source_id", ex["id"])) not in val_ids]
    val = [ex for ex in examples if str(ex.get("source_id", ex["id"])) in val_ids]
    return train, val


def format_text(example: Mapping[str, Any]) -> str:
    """The training text without the eos token: `{prompt}\\n{reasoning}\\nAnswer: {answer}`."""
    return f"{str(example['prompt']).strip()}\n{str(example['reasoning']).strip()}\n{ANSWER_PREFIX} " \
           f"{str(example['answer']).strip()}"


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _eos(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise FailedPreconditionError("the tokenizer has no eos token: baking needs one to end each example")
    return int(eos)


def _pad(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else _eos(tokenizer)


def encode_prompt(tokenizer: Any, example: Mapping[str, Any]) -> list[int]:
    """The ids of `{prompt}\\n`: what training conditions on and what the evaluator samples after."""
    return _encode(tokenizer, f"{str(example['prompt']).strip()}\n")


@dataclass(frozen=True)
class Encoded:
    """One example's ids in three pieces: prompt (never a target), reasoning, answer line + eos."""

    id: str
    strategy: str
    prompt: tuple[int, ...]
    reasoning: tuple[int, ...]
    answer: tuple[int, ...]

    @property
    def input_ids(self) -> list[int]:
        return [*self.prompt, *self.reasoning, *self.answer]


def encode_example(tokenizer: Any, example: Mapping[str, Any], max_seq_len: int) -> Encoded | None:
    """The example's ids, the prompt cut from the left to fit `max_seq_len`; None when the reasoning, the
    answer line and eos do not fit beside one prompt token (see the module docstring)."""
    prompt = encode_prompt(tokenizer, example)
    reasoning = _encode(tokenizer, str(example["reasoning"]).strip())
    answer = _encode(tokenizer, f"\n{ANSWER_PREFIX} {str(example['answer']).strip()}") + [_eos(tokenizer)]
    room = max_seq_len - len(reasoning) - len(answer)
    if room < 1:
        return None
    return Encoded(id=str(example.get("id", "")), strategy=str(example.get("strategy", "")),
                   prompt=tuple(prompt[-room:]), reasoning=tuple(reasoning), answer=tuple(answer))


def pad_batch(encoded: Sequence[Encoded], tokenizer: Any, *, span: str = "continuation") -> dict[str, torch.Tensor]:
    """Right-padded input_ids and labels (B, L). span "continuation": targets are reasoning + answer line +
    eos; "reasoning": the reasoning tokens only (token accuracy). Prompt and padding are IGNORE_INDEX."""
    if span not in ("continuation", "reasoning"):
        raise InvalidSpecError(f"must be 'continuation' or 'reasoning', got {span!r}", field="span")
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), _pad(tokenizer), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(encoded):
        seq = e.input_ids
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        start = len(e.prompt)
        stop = start + len(e.reasoning) + (len(e.answer) if span == "continuation" else 0)
        labels[row, start:stop] = ids[row, start:stop]
    return {"input_ids": ids, "labels": labels}


# --- the optimizer ----------------------------------------------------------------------------------------

def make_optimizer(model: nn.Module, cfg: Any = None) -> MuonGrokfast:
    """MuonGrokfast's baking preset, overridden by the profile's `quietstar.baking_optimizer` section
    (an OptimizerConfig) when given; QK-clip on the model's attention; global grad-norm clip 1.0."""
    overrides = {} if cfg is None else {f: getattr(cfg, f) for f in _OPT_FIELDS}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    qk = model.qk_clip_modules() if hasattr(model, "qk_clip_modules") else None
    return MuonGrokfast.baking(params, qk_modules=qk, max_grad_norm=GRAD_CLIP, **overrides)


# --- the KL teacher ---------------------------------------------------------------------------------------

def fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state tensors (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class KLTeacher:
    """A frozen copy of the pre-baking model and its few-shot prefix (Prompt Baking's prompted teacher)."""

    def __init__(self, model: nn.Module, tokenizer: Any, shots: Sequence[Mapping[str, Any]], *,
                 max_new_tokens: int = 64, temperature: float = 1.0):
        self.model = copy.deepcopy(model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.shots = [dict(s) for s in shots]
        prefix: list[int] = []
        for shot in shots:
            e = encode_example(tokenizer, shot, 10**9)
            prefix.extend(e.input_ids)   # each shot ends in eos, as every training sequence does
        self.prefix = prefix
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.fingerprint = fingerprint(self.model)

    def sample(self, prompts: Sequence[Sequence[int]], *, seed: int) -> list[list[int]]:
        """One continuation per prompt ids, sampled from the teacher after `prefix + prompt`; ends with eos
        when the teacher emitted it within max_new_tokens."""
        eos = _eos(self.tokenizer)
        rows = sample_outputs(self.model, self.tokenizer, [[*self.prefix, *p] for p in prompts],
                              max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=seed)
        return [row + [eos] if len(row) < self.max_new_tokens else row for row in rows]

    @torch.no_grad()
    def logits(self, student_ids: torch.Tensor) -> torch.Tensor:
        """The teacher's logits at the student's positions: run on prefix + ids, the prefix's dropped."""
        prefix = torch.tensor(self.prefix, dtype=torch.long, device=student_ids.device)
        full = torch.cat([prefix.expand(student_ids.shape[0], -1), student_ids], dim=1)
        self.model.eval()
        # act_threshold 1 = never halt early: all N_sup steps, the same computation as the student's
        # train-mode forward (minus dropout), so the KL measures the prefix, not halting.
        return self.model(full, act_threshold=1.0).logits[:, len(self.prefix):].float()

    def unchanged(self) -> bool:
        return fingerprint(self.model) == self.fingerprint


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over target positions of KL(teacher ‖ student) of the next-token distributions; position t
    predicts labels[t + 1] (the model's shift)."""
    mask = labels[:, 1:] != IGNORE_INDEX
    log_s = F.log_softmax(student_logits[:, :-1].float(), dim=-1)
    log_t = F.log_softmax(teacher_logits[:, :-1].float(), dim=-1)
    per = (log_t.exp() * (log_t - log_s)).sum(-1)
    return (per * mask).sum() / mask.sum().clamp(min=1)


def mean_kl(teacher: KLTeacher, model: nn.Module, tokenizer: Any, rows: Sequence[Encoded], *,
            batch_size: int = 16) -> float:
    """KL(teacher ‖ model) averaged over the continuation tokens of `rows` (e.g. from `kl_batches`), both in
    eval mode with all N_sup steps (as the teacher's targets are computed): the quantity the KL objective
    lowers, measured without dropout."""
    from shared.evaluation.lm import evaluating

    device = device_of(model)
    total, count = 0.0, 0
    with evaluating(model):
        for start in range(0, len(rows), batch_size):
            b = pad_batch(rows[start:start + batch_size], tokenizer)
            ids, labels = b["input_ids"].to(device), b["labels"].to(device)
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            total += float(kl_loss(model(ids, act_threshold=1.0).logits, teacher.logits(ids), labels)) * n
            count += n
    return total / max(count, 1)


def kl_batches(teacher: KLTeacher, encoded: Sequence[Encoded], *, seed: int, max_seq_len: int) -> list[Encoded]:
    """The student's KL training rows: each example's prompt and one teacher-sampled continuation (the
    prompt cut from the left so the row fits max_seq_len)."""
    trajectories = teacher.sample([e.prompt for e in encoded], seed=seed)
    rows = []
    for e, traj in zip(encoded, trajectories):
        traj = traj[:max_seq_len - 1]
        room = max_seq_len - len(traj)
        rows.append(Encoded(id=e.id, strategy=e.strategy, prompt=e.prompt[-room:], reasoning=tuple(traj), answer=()))
    return rows


# --- training ---------------------------------------------------------------------------------------------

class BakingTrainer:
    """Epochs of baking over fixed examples with one optimizer (kept across the mitigation's epochs)."""

    def __init__(self, model: nn.Module, tokenizer: Any, train_examples: Sequence[Mapping[str, Any]],
                 optimizer_cfg: Any = None, *, batch_size: int, seed: int, objective: str = "sft",
                 teacher: KLTeacher | None = None, max_seq_len: int | None = None,
                 on_step: Callable[[dict[str, float]], None] | None = None):
        if objective not in OBJECTIVES:
            raise InvalidSpecError(f"must be one of {OBJECTIVES}, got {objective!r}", field="objective")
        if objective == "kl" and teacher is None:
            raise InvalidSpecError("objective 'kl' needs a teacher", field="teacher")
        if batch_size < 1:
            raise InvalidSpecError(f"must be >= 1, got {batch_size}", field="batch_size")
        self.model, self.tokenizer, self.objective, self.teacher = model, tokenizer, objective, teacher
        self.batch_size, self.seed, self.on_step = batch_size, seed, on_step
        self.max_seq_len = int(max_seq_len or model.config.max_seq_len)
        encoded = [encode_example(tokenizer, ex, self.max_seq_len) for ex in train_examples]
        self.encoded = [e for e in encoded if e is not None]
        self.dropped_too_long = len(encoded) - len(self.encoded)
        if self.dropped_too_long:
            log.warning("baking: %d of %d training examples do not fit max_seq_len %d and are dropped",
                        self.dropped_too_long, len(encoded), self.max_seq_len)
        if not self.encoded:
            raise FailedPreconditionError(f"no training example fits max_seq_len {self.max_seq_len} "
                                          f"({len(encoded)} given)")
        self.optimizer = make_optimizer(model, optimizer_cfg)
        self.epoch = 0
        self.step = 0

    @property
    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def scale_lr(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def _loss(self, batch: Sequence[Encoded]) -> torch.Tensor:
        device = device_of(self.model)
        b = pad_batch(batch, self.tokenizer)
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        if self.objective == "sft":
            return self.model(ids, labels=labels).loss
        # Pure KL, as Prompt Baking: adding the halting loss (≈ 0.6 nats of BCE against a KL of ~0.01–0.1)
        # would drown the objective — measured on the tiny model, it raised the KL it was meant to lower.
        return kl_loss(self.model(ids).logits, self.teacher.logits(ids), labels)

    def train_epoch(self) -> float:
        """One pass over the examples in a seeded order; returns the mean loss."""
        rows = list(self.encoded)
        if self.objective == "kl":
            rows = kl_batches(self.teacher, rows, seed=self.seed * 1_000_003 + self.epoch,
                              max_seq_len=self.max_seq_len)
        random.Random(self.seed * 7919 + self.epoch).shuffle(rows)
        self.model.train()
        total, n = 0.0, 0
        for start in range(0, len(rows), self.batch_size):
            loss = self._loss(rows[start:start + self.batch_size])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"baking loss is {value} at step {self.step}", step=self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            total += value
            n += 1
            if self.on_step is not None:
                self.on_step({BAKING_LOSS: value, BAKING_EPOCH: float(self.epoch), "baking/step": float(self.step)})
        self.optimizer.zero_grad(set_to_none=True)
        self.epoch += 1
        return total / max(n, 1)


def train_more_epochs(trainer: BakingTrainer, epochs: int) -> list[float]:
    """The checklist's `train_more_epochs(model, 3)`: `epochs` more epochs with the trainer's optimizer;
    returns their mean losses."""
    return [trainer.train_epoch() for _ in range(epochs)]


@dataclass
class BakingCheckpoint:
    """Where baking stands after an epoch (what a restarted job resumes from): `progress` is JSON (epochs,
    history, the mitigation's state, the pre-training metrics, the best epoch so far), the optimizer's state
    dict and the torch RNG state (dropout) are tensors; `best_weights` is the best epoch's state dict when
    that is an earlier epoch (None when it is this one). The model's weights are the caller's to save beside
    it."""

    progress: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng_state: torch.Tensor
    best_weights: dict[str, torch.Tensor] | None = None


@dataclass
class BakingResult:
    converged: bool                     # the returned weights' format adherence >= target
    mitigated: bool                     # the halve-LR + 3 epochs mitigation ran
    target: float
    final_metrics: dict[str, float]     # the returned weights' (the best epoch's) validation
    initial_metrics: dict[str, float] | None   # before any update (None when not measured)
    history: list[dict[str, Any]]       # per epoch: epoch, stage ("planned"/"mitigation"), loss, lrs, metrics
    epochs_run: int
    objective: str
    train_examples: int                 # rows trained on
    dropped_too_long: int               # training examples that did not fit max_seq_len
    lrs_before_mitigation: list[float] | None = None
    lrs_after_mitigation: list[float] | None = None
    teacher_fingerprint: str | None = None
    teacher_unchanged: bool | None = None
    teacher: KLTeacher | None = field(default=None, repr=False)
    best_epoch: int = 0                 # the epoch whose weights are returned
    restored_best: bool = False         # True when that is an earlier epoch than the last one trained

    @property
    def format_adherence(self) -> float:
        return self.final_metrics[FORMAT_ADHERENCE]


def bake(model: nn.Module, tokenizer: Any, train_examples: Sequence[Mapping[str, Any]],
         val_examples: Sequence[Mapping[str, Any]], spec: Any, *, epochs: int,
         on_epoch: Callable[[dict[str, Any]], None] | None = None, seed: int,
         objective: str = "sft", evaluator: Callable[..., dict[str, float]] | None = None,
         eval_limit: int | None = 32, max_new_tokens: int = 64, eval_temperature: float = 0.0,
         evaluate_initial: bool = True, kl_shots: int = 2, kl_max_new_tokens: int | None = None,
         on_step: Callable[[dict[str, float]], None] | None = None,
         on_checkpoint: Callable[[BakingCheckpoint], None] | None = None,
         resume: BakingCheckpoint | None = None, teacher_model: nn.Module | None = None) -> BakingResult:
    """Bake the reasoning format into `model` (in place; see the module docstring).

    spec: the profile's QuietStarConfig (uses baking_optimizer, format_adherence_target, batch_size).
    epochs: the planned epochs (the profile's baking_epochs). on_epoch(record) after each epoch's
    validation, record = {"epoch", "stage", "loss", "lrs", "metrics", BAKING_EPOCH, BAKING_LOSS, **metrics}.
    evaluator(model, tokenizer, val_examples, *, limit, max_new_tokens, temperature, seed, max_seq_len)
    -> metrics; default `evaluate_baking`. kl_*: the KL objective's few-shot count and sample length
    (default max_new_tokens).

    on_checkpoint(BakingCheckpoint) after every epoch's validation (the caller saves it with the model's
    weights); resume: such a checkpoint, with the model already holding its weights — baking goes on from
    the next epoch exactly as an uninterrupted run would (same data order, dropout, mitigation decision,
    best epoch). The model ends holding the best epoch's weights (module docstring).
    teacher_model: what the KL teacher is copied from (default `model`); on a resumed KL run pass the
    pre-baking model, since `model` then holds baked weights.
    """
    if epochs < 1:
        raise InvalidSpecError(f"must be >= 1, got {epochs}", field="epochs")
    if objective not in OBJECTIVES:
        raise InvalidSpecError(f"must be one of {OBJECTIVES}, got {objective!r}", field="objective")
    if not val_examples:
        raise InvalidSpecError("no validation examples: the convergence check needs held-out items",
                               field="val_examples")
    target = float(spec.format_adherence_target)
    evaluate = evaluator if evaluator is not None else evaluate_baking
    max_seq_len = int(model.config.max_seq_len)
    torch.manual_seed(seed)   # dropout during training

    def validate(epoch_seed: int) -> dict[str, float]:
        return dict(evaluate(model, tokenizer, val_examples, limit=eval_limit, max_new_tokens=max_new_tokens,
                             temperature=eval_temperature, seed=epoch_seed, max_seq_len=max_seq_len))

    if resume is not None:
        initial = resume.progress["initial_metrics"]
    else:
        initial = validate(seed) if evaluate_initial else None
    teacher = None
    if objective == "kl":
        if kl_shots < 1:
            raise InvalidSpecError(f"must be >= 1, got {kl_shots}", field="kl_shots")
        pool = sorted(train_examples, key=lambda e: str(e["id"]))
        shots = random.Random(seed).sample(pool, min(kl_shots, len(pool)))
        teacher = KLTeacher(teacher_model if teacher_model is not None else model, tokenizer, shots,
                            max_new_tokens=kl_max_new_tokens or max_new_tokens)
    trainer = BakingTrainer(model, tokenizer, train_examples, spec.baking_optimizer, batch_size=spec.batch_size,
                            seed=seed, objective=objective, teacher=teacher, max_seq_len=max_seq_len,
                            on_step=on_step)
    history: list[dict[str, Any]] = []
    mitigated = False
    before = after = None
    best_epoch = 0                                   # 0: no epoch trained yet
    best_weights: dict[str, torch.Tensor] | None = None

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    if resume is not None:
        state = resume.progress
        if state.get("objective", objective) != objective:
            raise FailedPreconditionError(f"the checkpoint is of a {state['objective']!r} baking run, not "
                                          f"{objective!r}")
        trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
        history = [dict(h) for h in state["history"]]
        mitigated = bool(state["mitigated"])
        before, after = state.get("lrs_before_mitigation"), state.get("lrs_after_mitigation")
        trainer.optimizer.load_state_dict(resume.optimizer_state)
        torch.set_rng_state(resume.rng_state)
        best_epoch = int(state.get("best_epoch", trainer.epoch))
        if best_epoch == trainer.epoch:
            best_weights = snapshot()
        elif resume.best_weights is None:
            raise FailedPreconditionError(f"the checkpoint after epoch {trainer.epoch} names epoch {best_epoch} "
                                          f"as the best but does not hold its weights")
        else:
            best_weights = {k: v.detach().clone() for k, v in resume.best_weights.items()}
        log.info("baking resumed after epoch %d", trainer.epoch)

    def save() -> None:
        if on_checkpoint is None:
            return
        progress = {"epoch": trainer.epoch, "step": trainer.step, "history": history, "mitigated": mitigated,
                    "lrs_before_mitigation": before, "lrs_after_mitigation": after, "initial_metrics": initial,
                    "objective": objective, "best_epoch": best_epoch}
        # copies: the optimizer's state dict holds its live buffers, which the next step changes
        on_checkpoint(BakingCheckpoint(copy.deepcopy(progress), copy.deepcopy(trainer.optimizer.state_dict()),
                                       torch.get_rng_state(),
                                       best_weights if best_epoch != trainer.epoch else None))

    def adherence_of(epoch: int) -> float:
        return float(history[epoch - 1]["metrics"][FORMAT_ADHERENCE])

    def run_epoch(stage: str) -> dict[str, float]:
        nonlocal best_epoch, best_weights
        loss = trainer.train_epoch()
        metrics = validate(seed + trainer.epoch)
        record = {"epoch": trainer.epoch, "stage": stage, "loss": loss, "lrs": trainer.lrs, "metrics": metrics,
                  BAKING_EPOCH: float(trainer.epoch), BAKING_LOSS: loss, **metrics}
        history.append(record)
        log.info("baking epoch %d (%s): loss %.4f, format adherence %.3f", trainer.epoch, stage, loss,
                 metrics.get(FORMAT_ADHERENCE, float("nan")))
        if on_epoch is not None:
            on_epoch(record)
        if best_epoch == 0 or metrics[FORMAT_ADHERENCE] >= adherence_of(best_epoch):   # a tie: the later epoch
            best_epoch, best_weights = trainer.epoch, snapshot()
        save()
        return metrics

    def done(stage: str) -> int:
        return sum(1 for h in history if h["stage"] == stage)

    for _ in range(epochs - done("planned")):
        run_epoch("planned")
    if not mitigated and adherence_of(best_epoch) < target:
        print(f"⚠️ Baking failed: {adherence_of(best_epoch):.2%} < {target:.0%} format adherence; "
              f"halving the learning rate and training {MITIGATION_EPOCHS} more epochs")
        mitigated = True
        before = trainer.lrs
        trainer.scale_lr(MITIGATION_LR_FACTOR)
        after = trainer.lrs
    if mitigated:
        for _ in range(MITIGATION_EPOCHS - done("mitigation")):
            run_epoch("mitigation")
    restored = best_epoch != trainer.epoch
    if restored:
        model.load_state_dict(best_weights)
        log.info("baking: epoch %d validated best (format adherence %.3f, the last epoch %.3f): its weights "
                 "are the result", best_epoch, adherence_of(best_epoch), adherence_of(trainer.epoch))
    metrics = dict(history[best_epoch - 1]["metrics"])
    converged = metrics[FORMAT_ADHERENCE] >= target
    return BakingResult(converged=converged, mitigated=mitigated, target=target, final_metrics=metrics,
                        initial_metrics=initial, history=history, epochs_run=trainer.epoch, objective=objective,
                        train_examples=len(trainer.encoded), dropped_too_long=trainer.dropped_too_long,
                        lrs_before_mitigation=before, lrs_after_mitigation=after,
                        teacher_fingerprint=teacher.fingerprint if teacher else None,
                        teacher_unchanged=teacher.unchanged() if teacher else None, teacher=teacher,
                        best_epoch=best_epoch, restored_best=restored)
