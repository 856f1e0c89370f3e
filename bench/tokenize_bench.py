"""Tokenisation throughput: our curriculum path (Phase1Dataset) vs a plain `tokenizers` batch encode.

    .venv/bin/python bench/tokenize_bench.py [--seq-len 512] [--batch 32] [--repeats 3]

Text: WikiText-2 valid + test (one language record per article) and GSM8K train (math records: question,
worked solution, answer) from ../shared/datasets; if the mirror is absent, a generated text of similar size
(noted in the report). For GPT-2's tokenizer and a 4096-token ByteLevel BPE trained on the same text, times
(median of `--repeats`):
  (a) Phase1Dataset over the records: plan, format (prompt/answer split, loss masks), tokenise, pack into
      seq_len + 1 windows, stack batches of LongTensors. Weights are proportional to each category's
      record count, so one epoch draws about every record once: about the same text as (b).
  (b) `tokenizers.Tokenizer.encode_batch` of each record's whole document text (what (a) tokenises).
Appends a dated Markdown section to bench/RESULTS.md; numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, append_section, machine  # noqa: E402 - bench/ is not a package
DATASETS = REPO.parent / "shared" / "datasets"
GPT2_DIR = REPO.parent / "shared" / "tokenizers" / "gpt2"
_HEADING = re.compile(r"^ = [^=].* = $")

log = logging.getLogger("tokenize_bench")


def real_records() -> list:
    from shared.data.records import Record

    records = []
    for which in ("valid", "test"):
        articles: list[list[str]] = []
        text = (DATASETS / "WikiText" / f"wikitext-2.{which}.txt").read_text(encoding="utf-8")
        for line in text.splitlines(keepends=True):
            if _HEADING.match(line.rstrip("\n")) or not articles:
                articles.append([])
            articles[-1].append(line)
        records += [Record(id=f"WikiText/{which}-{i}", dataset="WikiText", category="language", split="train",
                           text="".join(a)) for i, a in enumerate(articles) if "".join(a).strip()]
    for i, line in enumerate((DATASETS / "GSM8K" / "train.jsonl").read_text(encoding="utf-8").splitlines()):
        d = json.loads(line)
        solution, _, answer = d["answer"].rpartition("####")
        records.append(Record(id=f"GSM8K/{i}", dataset="GSM8K", category="math", split="train",
                              prompt=d["question"], answer=answer.strip(), rationale=solution.strip()))
    return records


def generated_records() -> list:
    """About the mirror's size (~6 MB): random sentences from a fixed word list, seeded."""
    from shared.data.records import Record

    rng = random.Random(0)
    words = ("the of and to in is was for on that with as by at from his an were are which this be it "
             "lobster river city army season album game station county ship team war song film").split()
    say = lambda n: " ".join(rng.choice(words) for _ in range(n)).capitalize() + " ."  # noqa: E731
    records = [Record(id=f"WikiText/{i}", dataset="WikiText", category="language", split="train",
                      text="\n".join(say(rng.randint(8, 40)) for _ in range(rng.randint(20, 200))))
               for i in range(1200)]
    records += [Record(id=f"GSM8K/{i}", dataset="GSM8K", category="math", split="train",
                       prompt=say(40) + "?", answer=str(rng.randint(1, 999)), rationale=say(60))
                for i in range(7500)]
    return records


def median_time(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    times, out = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from shared.data.curriculum import Phase1Dataset, _pieces
    from shared.data.tokenizer import load_gpt2_tokenizer, train_bpe_tokenizer

    torch.set_num_threads(1)
    have_mirror = (DATASETS / "WikiText").is_dir() and (DATASETS / "GSM8K").is_dir()
    records = real_records() if have_mirror else generated_records()
    texts = ["".join(_pieces(r)) for r in records]  # each record's document, as (a) tokenises it
    counts = {c: sum(r.category == c for r in records) for c in ("math", "language")}
    weights = {c: n / len(records) for c, n in counts.items()}
    megabytes = sum(len(t.encode()) for t in texts) / 1e6

    start = time.perf_counter()
    bpe = train_bpe_tokenizer(texts, 4096)
    train_s = time.perf_counter() - start
    tokenizers = {"GPT-2 (50,257)": load_gpt2_tokenizer(GPT2_DIR), "trained BPE (4,096)": bpe}

    rows = []
    for name, tok in tokenizers.items():
        def ours() -> int:
            ds = Phase1Dataset(_by_dataset(records), tok, seq_len=args.seq_len,
                               seed=0, dataset_weights=weights)
            return sum(b["input_ids"].numel() for b in ds.batches(args.batch))

        def plain() -> int:
            return sum(len(e.ids) for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False))

        for path, fn in ((f"(a) Phase1Dataset: format + pack + batches({args.batch})", ours),
                         ("(b) Tokenizer.encode_batch", plain)):
            seconds, tokens = median_time(fn, args.repeats)
            rows.append((name, path, tokens, seconds))
            log.info("%s %s: %d tokens in %.2f s", name, path, tokens, seconds)

    m = machine()
    source = ("WikiText-2 valid+test (one record per article) + GSM8K train, from ../shared/datasets"
              if have_mirror else "NOTE: dataset mirror absent; a generated text of similar size")
    lines = [
        f"\n## tokenize_bench — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n",
        f"- machine: {m['platform']}; CPU {m['cpu']}; {m['cores']} cores; {m['ram']} RAM",
        f"- python {platform.python_version()}, torch {torch.__version__}, tokenizers {version('tokenizers')}, "
        f"transformers {version('transformers')}, numpy {version('numpy')}",
        f"- torch threads: {torch.get_num_threads()}; tokenizers (Rayon) threads: "
        f"{os.environ.get('RAYON_NUM_THREADS', 'library default = all cores')}, in both paths; "
        f"median of {args.repeats}",
        f"- text: {source}; {len(records)} records ({counts['language']} language, {counts['math']} math), "
        f"{megabytes:.1f} MB; seq_len {args.seq_len}; (a) counts the packed tokens it yields (tail dropped, "
        f"records drawn by weight ∝ count, so about the same text as (b)); BPE trained on this text in "
        f"{train_s:.2f} s",
        "",
        "| tokenizer | path | tokens | s | tokens/s | (a)/(b) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for i, (name, path, tokens, seconds) in enumerate(rows):
        ratio = "" if i % 2 else f"{(tokens / seconds) / (rows[i + 1][2] / rows[i + 1][3]):.2f}"
        lines.append(f"| {name} | {path} | {tokens:,} | {seconds:.3f} | {tokens / seconds:,.0f} | {ratio} |")
    lines.append("")
    section = "\n".join(lines)
    append_section(section)


def _by_dataset(records: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in records:
        out.setdefault(r.dataset, []).append(r)
    return out


if __name__ == "__main__":
    main()
