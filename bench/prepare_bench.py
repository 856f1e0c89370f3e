"""How long the datasets phase takes to prepare the `tiny` profile from the local mirror (target < 1 min).

    .venv/bin/python bench/prepare_bench.py [--profile tiny] [--repeats 3]

Times, median of `--repeats`: reading + splitting + decontaminating + writing every dataset
(prepare_datasets), then training the profile's tokenizer on the train splits, then the round-trip check.
Appends a dated section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, machine_line  # noqa: E402 - bench/ is not a package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import torch

    from services.dataset.core.prepare import prepare_datasets
    from services.dataset.core.runner import eval_texts, training_texts
    from shared.config import load_profile
    from shared.data.tokenizer import roundtrip_rate, train_bpe_tokenizer

    torch.set_num_threads(1)
    spec = load_profile(args.profile).phases.datasets
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            prepared = prepare_datasets(spec, Path(tmp) / "out", seed=0)
            t1 = time.perf_counter()
            tok = train_bpe_tokenizer(training_texts(prepared.records), spec.tokenizer.vocab_size)
            t2 = time.perf_counter()
            rate = roundtrip_rate(tok, eval_texts(prepared.records, 500))
            t3 = time.perf_counter()
            runs.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
            counts = {s: sum(d["files"][s]["count"] for d in prepared.manifest["datasets"].values())
                      for s in ("train", "val", "test")}
    med = [statistics.median(r[i] for r in runs) for i in range(4)]
    lines = [
        f"## prepare_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        machine_line(),
        f"- python {sys.version.split()[0]}, torch {torch.__version__}, tokenizers {version('tokenizers')}",
        f"- profile `{args.profile}` from the local mirror ({spec.mirror_dir}); torch threads 1; "
        f"median of {args.repeats}; {len(prepared.manifest['datasets'])} datasets, records train "
        f"{counts['train']:,} / val {counts['val']:,} / test {counts['test']:,}; BPE {spec.tokenizer.vocab_size}; "
        f"round-trip rate {rate:.3f}",
        "",
        "| step | s |",
        "|---|---:|",
        f"| read, split, decontaminate, write ({len(prepared.manifest['datasets'])} datasets) | {med[0]:.2f} |",
        f"| train the tokenizer | {med[1]:.2f} |",
        f"| round-trip check | {med[2]:.2f} |",
        f"| **total** (target < 60 s) | **{med[3]:.2f}** |",
        "",
    ]
    append_section("\n".join(lines))


if __name__ == "__main__":
    main()
