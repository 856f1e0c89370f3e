"""The Cognate phase's inputs: the prepared curriculum and its tokenizer, fetched from the store and checked.

The tokenizer the data was prepared with must be the tokenizer the models are built for: the datasets
artifact records its fingerprint, and a mismatch is an error before anything trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.data.prepared import load_split, verify_prepared
from shared.data.records import Record
from shared.data.tokenizer import check_same_tokenizer, load_tokenizer, tokenizer_fingerprint
from shared.errors import FailedPreconditionError


@dataclass
class CognateData:
    train: dict[str, list[Record]]
    val: dict[str, list[Record]]
    test: dict[str, list[Record]]
    tokenizer: object
    fingerprint: str
    manifest: dict


def load_cognate_data(ctx, workdir: Path) -> CognateData:
    """Fetch (and verify) the `datasets` and `tokenizer` inputs of a job."""
    data_dir = ctx.store.fetch(ctx.request.input("datasets"), workdir / "datasets") / "data"
    tok_dir = ctx.store.fetch(ctx.request.input("tokenizer"), workdir / "tokenizer") / "tokenizer"
    return load_cognate_data_from(data_dir, tok_dir, recorded=data_dir.parent / "tokenizer_fingerprint.json")


def load_cognate_data_from(data_dir: Path, tok_dir: Path, *, recorded: Path | None = None) -> CognateData:
    manifest = verify_prepared(data_dir)
    tokenizer = load_tokenizer(tok_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if recorded is not None and recorded.is_file():
        check_same_tokenizer(json.loads(recorded.read_text())["fingerprint"], fingerprint,
                             what="the datasets' tokenizer and the tokenizer artifact")
    splits = {s: {n: load_split(data_dir, n, s) for n in manifest["datasets"]} for s in ("train", "val", "test")}
    if not any(splits["train"].values()):
        raise FailedPreconditionError(f"the prepared curriculum in {data_dir} has no training records")
    return CognateData(splits["train"], splits["val"], splits["test"], tokenizer, fingerprint, manifest)
