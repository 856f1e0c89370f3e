"""Phase 1's curriculum: three stages of datasets, a category mix, and the packed token stream the
Cognate models train on (checklist Phase 1: Phase1Dataset, "Curriculum Stage 1–3", dataset_weights).

One epoch of `Phase1Dataset` is:
  1. a plan: N draws (N = the stage's usable records); draw i picks a category with probability
     `stage_weights(...)[c]`, then the next record of that category's pool in a shuffled order that is
     re-shuffled each time the pool is used up (every record once before any repeats);
  2. documents: each drawn record → `format_record` → (ids, loss mask), ending in eos;
  3. packing: the documents, concatenated, are cut into windows of seq_len + 1 tokens at a stride of
     seq_len, so window k covers stream[k·L : k·L + L + 1] and every stream token after the first is a
     target exactly once: input_ids = window[:-1], labels = window[1:] with -100 where the mask is 0.
     The tail shorter than L + 1 is dropped: no padding, every sequence is full. Documents are only
     separated by eos (no attention mask between them). A QA document's first token is prompt, so the
     position after an eos is never a target there; a language document's first token is a target,
     predicted from the eos before it, as in GPT-2's training.

Everything is a function of (records, tokenizer, stage, weights, seq_len, seed, epoch), so the stream is
reproducible; the cursor (epoch, position, draw, offset) locates the next window in the stream, so a
restored dataset yields exactly the sequences an uninterrupted one would have, without re-tokenising the
part already consumed. Weights apply to records (draws), not tokens.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from shared.canonical import loads_strict
from shared.data.records import CATEGORIES, Record, canonical_name
from shared.errors import FailedPreconditionError, InvalidSpecError, NotFoundError

log = logging.getLogger(__name__)

# Checklist Phase 1: Foundation (epochs 1–3), Reasoning (4–6), Advanced (7–10).
STAGES: dict[int, tuple[str, ...]] = {
    1: ("GSM8K", "SVAMP", "MBPP"),
    2: ("ARC-Easy", "ARC-Challenge", "PIQA", "WikiText"),
    3: ("HotpotQA", "DROP", "HellaSwag", "FineWeb-Edu"),
}
# An optional dataset that no source provided, and the dataset that fills its share of its stage:
# FineWeb-Edu (optional in tiny/ci, absent offline) is replaced by WikiText as stage 3's language data.
SUBSTITUTES: dict[str, str] = {"FineWeb-Edu": "WikiText"}
DEFAULT_WEIGHTS: dict[str, float] = {"math": 0.4, "qa": 0.3, "code": 0.1, "commonsense": 0.1, "language": 0.1}
IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index
ANSWER_CUE = "Answer:"
_CHUNK = 256  # records tokenised per encode_batch call
_STATE_KEYS = ("epoch", "position", "draw", "offset", "seed", "stage", "seq_len", "num_records")


def stage_datasets(stage: int, available: Mapping[str, Sequence[Record]]) -> tuple[str, ...]:
    """The datasets of a stage, with SUBSTITUTES standing in for absent ones."""
    names = list(STAGES[stage])
    if not any(available.get(n) for n in names):
        return tuple(names)  # nothing of the stage itself: a substitute would make a different stage
    for absent, fill in SUBSTITUTES.items():
        if absent in names and not available.get(absent) and fill not in names and available.get(fill):
            names.append(fill)
    return tuple(names)


def stage_for_epoch(epoch: int, total_epochs: int) -> int:
    """The curriculum stage (1, 2 or 3) of a 0-based epoch.

    The checklist gives 10 epochs as 3/3/4. For any total T, stage 1 ends at round(0.3·T) and stage 2 at
    round(0.6·T) (halves round up), clamped so that each stage keeps at least one epoch when T ≥ 3
    (T = 8 → 2/3/3, T = 12 → 4/3/5). With T < 3 the epochs take stages 1, 2 in order.
    """
    if total_epochs < 1:
        raise InvalidSpecError(f"needs at least one epoch, got {total_epochs}", field="total_epochs")
    if not 0 <= epoch < total_epochs:
        raise InvalidSpecError(f"epoch {epoch} is outside 0..{total_epochs - 1} (epochs are 0-based)",
                               field="epoch")
    if total_epochs < 3:
        return epoch + 1
    end1 = min(max((3 * total_epochs + 5) // 10, 1), total_epochs - 2)  # integer round-half-up of 0.3·T
    end2 = min(max((6 * total_epochs + 5) // 10, end1 + 1), total_epochs - 1)
    return 1 if epoch < end1 else 2 if epoch < end2 else 3


def stage_weights(weights: Mapping[str, float], categories_present: Sequence[str] | set[str]
                  ) -> dict[str, float]:
    """Renormalise category weights over the categories a stage has; absent or zero ones are dropped.

    A category missing from `weights` has weight 0. The result is in CATEGORIES order and sums to 1.
    """
    unknown = sorted(set(weights) - set(CATEGORIES))
    if unknown:
        raise InvalidSpecError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}",
                               field="dataset_weights")
    for cat, w in weights.items():
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InvalidSpecError(f"weight of {cat} must be a finite number ≥ 0, got {w!r}",
                                   field=f"dataset_weights.{cat}")
    kept = {c: float(weights.get(c, 0.0)) for c in CATEGORIES if c in set(categories_present)}
    kept = {c: w for c, w in kept.items() if w > 0}
    total = sum(kept.values())
    if not kept:
        raise InvalidSpecError(f"no category present ({sorted(set(categories_present))}) has a weight > 0 "
                               f"in {dict(weights)}", field="dataset_weights")
    return {c: w / total for c, w in kept.items()}


def _pieces(record: Record) -> tuple[str, str]:
    """(context, target) text of a record: the loss sees only the target.

    The space before an answer belongs to the target (" 42", not "Answer: " + "42") so that tokenising the
    two parts apart gives the same tokens as tokenising the joined text — the tokens the model meets at
    evaluation after "Answer:".
    """
    if record.category == "language" or not record.prompt:
        return "", record.text or record.prompt
    answer = (record.choices[record.label] if record.is_multiple_choice else record.answer).strip()
    prompt, rationale = record.prompt.rstrip(), record.rationale.strip()
    if rationale:
        return prompt + "\n", rationale + (f"\n{ANSWER_CUE} {answer}" if answer else "")
    return f"{prompt}\n{ANSWER_CUE}", f" {answer}"


def _learnable(record: Record) -> bool:
    if record.category == "language" or not record.prompt:
        return bool(record.text or record.prompt)
    return bool(record.is_multiple_choice or record.answer.strip() or record.rationale.strip())


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise FailedPreconditionError("the tokenizer has no eos token; documents are separated by eos")
    return int(eos)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # one batched call into Rust, no per-text HF bookkeeping
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _format_many(records: Sequence[Record], tokenizer: Any, eos: int) -> list[tuple[np.ndarray, np.ndarray]]:
    pieces = [_pieces(r) for r in records]
    enc = _encode(tokenizer, [c for c, _ in pieces] + [t for _, t in pieces])
    out = []
    for ctx, tgt in zip(enc[:len(records)], enc[len(records):], strict=True):
        ids = np.array([*ctx, *tgt, eos], dtype=np.int64)
        mask = np.zeros(len(ids), dtype=bool)
        mask[len(ctx):] = True  # target and the closing eos: the model learns to stop
        out.append((ids, mask))
    return out


def format_record(record: Record, tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of one document, eos included.

    QA / math / code / commonsense: "prompt\\n[rationale\\n]Answer: answer" with the loss on the rationale
    and answer only; multiple choice answers with the gold choice's text; language records: every token.
    """
    [(ids, mask)] = _format_many([record], tokenizer, _eos_id(tokenizer))
    return ids.tolist(), mask.astype(np.int64).tolist()


def _load_record_files(paths: Sequence[str | Path]) -> dict[str, list[Record]]:
    by_ds: dict[str, list[Record]] = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise NotFoundError(f"record file {p} does not exist")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".jsonl":
            rows = [loads_strict(line, name=f"{p} line {n}") for n, line in enumerate(text.splitlines(), 1)
                    if line.strip()]
        else:
            doc = loads_strict(text, name=str(p))
            rows = doc["records"] if isinstance(doc, dict) and "records" in doc else doc
        if not isinstance(rows, list):
            raise InvalidSpecError(f"{p}: expected a list of records (or {{\"records\": [...]}})")
        for row in rows:
            rec = Record.from_dict(row)
            by_ds.setdefault(canonical_name(rec.dataset), []).append(rec)
    return by_ds


def _as_records_by_dataset(source: Any) -> dict[str, list[Record]]:
    if isinstance(source, Mapping):
        return {canonical_name(k): [r if isinstance(r, Record) else Record.from_dict(r) for r in v]
                for k, v in source.items()}
    items = list(source)
    if all(isinstance(x, (str, Path)) for x in items):
        return _load_record_files(items)
    if all(isinstance(x, Record) for x in items):
        by_ds: dict[str, list[Record]] = {}
        for r in items:
            by_ds.setdefault(canonical_name(r.dataset), []).append(r)
        return by_ds
    raise InvalidSpecError("expected {dataset: [Record]}, a list of Records or a list of record files",
                           field="records")


class Phase1Dataset(IterableDataset):
    """The packed, weighted, resumable token stream of one curriculum epoch (see the module docstring).

    Yields {"input_ids": LongTensor (seq_len,), "labels": LongTensor (seq_len,)}; `batches(B)` stacks
    them to (B, seq_len). `records` is {dataset: [Record]} (or a list of Records, or of record files:
    .jsonl of Record dicts, or .json with a list / {"records": [...]}). With `stage` set only that stage's
    datasets are used; `None` uses every dataset given. Only records of `split` are used. Records must come
    in a stable order: the stream is a function of it.

    Iterating continues from the cursor; a finished epoch yields nothing more until `set_epoch`. The
    cursor lives in this object, so iterate it in the training process (DataLoader workers would each
    advance a copy: refused).
    """

    def __init__(self, records: Any, tokenizer: Any, *, stage: int | None = None, seq_len: int = 512,
                 seed: int = 0, dataset_weights: Mapping[str, float] | None = None, epoch: int = 0,
                 split: str = "train"):
        super().__init__()
        if stage is not None and stage not in STAGES:
            raise InvalidSpecError(f"stage must be one of {sorted(STAGES)} or None, got {stage!r}",
                                   field="stage")
        for name, value, low in (("seq_len", seq_len, 1), ("seed", seed, 0), ("epoch", epoch, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidSpecError(f"must be an integer ≥ {low}, got {value!r}", field=name)
        by_ds = _as_records_by_dataset(records)
        if stage is not None:
            wanted = stage_datasets(stage, by_ds)
            ignored = sorted(set(by_ds) - set(wanted))
            if ignored:
                log.debug("stage %d ignores datasets %s", stage, ignored)
            by_ds = {k: v for k, v in by_ds.items() if k in wanted}
            if not any(by_ds.values()):
                raise FailedPreconditionError(f"stage {stage} needs some of {list(STAGES[stage])}; none given")
        pools: dict[str, list[Record]] = {}
        dropped = 0
        for name in sorted(by_ds):  # a fixed order: the plan indexes into these pools
            for rec in by_ds[name]:
                if rec.split == split and _learnable(rec):
                    pools.setdefault(rec.category, []).append(rec)
                else:
                    dropped += 1
        if dropped:
            log.info("%d records skipped (not split %r, or nothing to learn)", dropped, split)
        if not pools:
            raise FailedPreconditionError(f"no usable {split} records in {sorted(by_ds)}")
        self.weights = stage_weights(DEFAULT_WEIGHTS if dataset_weights is None else dataset_weights, pools)
        self.categories = tuple(self.weights)
        self._pools = [pools[c] for c in self.categories]
        self.num_records = sum(len(p) for p in self._pools)  # draws per epoch
        self.tokenizer, self._eos = tokenizer, _eos_id(tokenizer)
        self.stage, self.seq_len, self.seed, self.split = stage, seq_len, seed, split
        self.set_epoch(epoch)

    # -- the plan ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first sequence."""
        if not isinstance(epoch, int) or epoch < 0:
            raise InvalidSpecError(f"must be an integer ≥ 0, got {epoch!r}", field="epoch")
        self.epoch = epoch
        self.position, self._draw, self._offset = 0, 0, 0
        self._plan_cache: tuple[np.ndarray, np.ndarray] | None = None

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(category index, record index in that category's pool) per draw.

        Only Generator.random is used: a direct map of PCG64's bits, so far less likely to change across
        numpy versions than choice/permutation, whose algorithms numpy may change. Each category has its
        own stream keyed by its global index, so adding a category does not reshuffle the others.
        """
        if self._plan_cache is None:
            n = self.num_records
            u = np.random.default_rng([self.seed, self.epoch, 0]).random(n)
            cum = np.cumsum([self.weights[c] for c in self.categories])
            cat = np.minimum(np.searchsorted(cum / cum[-1], u, side="right"), len(cum) - 1)
            idx = np.zeros(n, dtype=np.int64)
            for k, c in enumerate(self.categories):
                where = np.flatnonzero(cat == k)
                size = len(self._pools[k])
                rng = np.random.default_rng([self.seed, self.epoch, 1 + CATEGORIES.index(c)])
                cycles = [np.argsort(rng.random(size), kind="stable") for _ in range(-(-len(where) // size))]
                if cycles:
                    idx[where] = np.concatenate(cycles)[: len(where)]
            self._plan_cache = (cat, idx)
        return self._plan_cache

    def sample_plan(self) -> list[Record]:
        """The records this epoch draws, in order (for inspection and tests)."""
        cat, idx = self._plan()
        return [self._pools[c][i] for c, i in zip(cat.tolist(), idx.tolist(), strict=True)]

    # -- the stream -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise FailedPreconditionError("Phase1Dataset keeps its resume cursor in the training process: "
                                          "use DataLoader(num_workers=0) or .batches()")
        return self._sequences()

    def _sequences(self) -> Iterator[dict[str, torch.Tensor]]:
        cat, idx = self._plan()
        n, width = self.num_records, self.seq_len
        draw, offset = self._draw, self._offset  # the next window starts at token `offset` of draw `draw`
        lens: deque[int] = deque()  # full lengths of the documents draw, draw+1, … held in the buffer
        ids = np.zeros(0, dtype=np.int64)
        mask = np.zeros(0, dtype=bool)
        nxt, skip = draw, offset  # skip: tokens of the first document already consumed before a resume
        while True:
            while len(ids) < width + 1 and nxt < n:
                stop = min(n, nxt + _CHUNK)
                docs = _format_many([self._pools[cat[i]][idx[i]] for i in range(nxt, stop)],
                                    self.tokenizer, self._eos)
                lens.extend(len(d) for d, _ in docs)  # full lengths: the cursor's offset counts from 0
                if skip:
                    if skip >= len(docs[0][0]):
                        raise FailedPreconditionError(f"resume offset {skip} is past the end of draw {nxt} "
                                                      f"({len(docs[0][0])} tokens): a foreign state")
                    docs[0] = (docs[0][0][skip:], docs[0][1][skip:])
                    skip = 0
                ids = np.concatenate([ids, *(d for d, _ in docs)])
                mask = np.concatenate([mask, *(m for _, m in docs)])
                nxt = stop
            if len(ids) < width + 1:
                return  # the epoch's tail: shorter than one window, dropped
            window, window_mask = ids[: width + 1], mask[: width + 1]
            labels = np.where(window_mask[1:], window[1:], IGNORE_INDEX)
            ids, mask = ids[width:], mask[width:]
            # Move the cursor `width` tokens on, document by document.
            left = width
            while left:
                in_doc = lens[0] - offset
                if left < in_doc:
                    offset, left = offset + left, 0
                else:
                    left -= in_doc
                    lens.popleft()
                    draw, offset = draw + 1, 0
            self.position, self._draw, self._offset = self.position + 1, draw, offset
            yield {"input_ids": torch.from_numpy(window[:-1].copy()), "labels": torch.from_numpy(labels)}

    def batches(self, batch_size: int, *, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """{"input_ids", "labels"} LongTensors of shape (batch_size, seq_len); the last batch may be smaller
        unless `drop_last`."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidSpecError(f"must be an integer ≥ 1, got {batch_size!r}", field="batch_size")
        group: list[dict[str, torch.Tensor]] = []
        for seq in self:
            group.append(seq)
            if len(group) == batch_size:
                yield {k: torch.stack([g[k] for g in group]) for k in group[0]}
                group = []
        if group and not drop_last:
            yield {k: torch.stack([g[k] for g in group]) for k in group[0]}

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The cursor after the sequences yielded so far, plus what it is only valid for (JSON-safe ints)."""
        return {"epoch": self.epoch, "position": self.position, "draw": self._draw, "offset": self._offset,
                "seed": self.seed, "stage": self.stage or 0, "seq_len": self.seq_len,
                "num_records": self.num_records}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where `state` was taken; refuses a state of a different seed, stage, length or data."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise InvalidSpecError(f"state lacks {missing}", field="state")
        for k in _STATE_KEYS:
            if not isinstance(state[k], int) or isinstance(state[k], bool) or state[k] < 0:
                raise InvalidSpecError(f"must be an integer ≥ 0, got {state[k]!r}", field=f"state.{k}")
        mine = self.state_dict()
        for k in ("seed", "stage", "seq_len", "num_records"):
            if state[k] != mine[k]:
                raise FailedPreconditionError(f"state.{k} is {state[k]} but this dataset has {mine[k]}: the "
                                              f"state belongs to another stream")
        if state["draw"] > self.num_records:
            raise InvalidSpecError(f"draw {state['draw']} > {self.num_records} records", field="state.draw")
        self.set_epoch(state["epoch"])
        self.position, self._draw, self._offset = state["position"], state["draw"], state["offset"]
