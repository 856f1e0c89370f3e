"""The datasets phase core: prepare the curriculum and the tokenizer, publish them as two artifacts.

Artifacts: "datasets" ({name}_{split}.json files + datasets_manifest.json) and "tokenizer" (tokenizer.json
and its fingerprint). Metrics: datasets/required_available_fraction, datasets/tokenizer_roundtrip_rate,
datasets/records/<split>.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from services.dataset.core.prepare import prepare_datasets
from shared.config.load import resolve_path
from shared.data.records import canonical_name
from shared.data.tokenizer import (
    load_gpt2_tokenizer,
    roundtrip_rate,
    save_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)
from shared.errors import InvalidSpecError
from shared.runtime import JobResult

log = logging.getLogger(__name__)

ROUNDTRIP_SAMPLE = 500


def training_texts(records_by_dataset) -> list[str]:
    """Texts the small BPE is trained on: train splits only, so no evaluation text shapes the vocab."""
    texts = []
    for splits in records_by_dataset.values():
        for r in splits.get("train", []):
            texts.append(r.text or "\n".join(p for p in (r.prompt, r.rationale, r.answer) if p))
    return texts


def eval_texts(records_by_dataset, limit: int) -> list[str]:
    texts = []
    for name in sorted(records_by_dataset):
        for r in records_by_dataset[name].get("val", [])[: max(1, limit // max(1, len(records_by_dataset)))]:
            texts.append(r.text or f"{r.prompt}\n{r.answer}")
    return texts[:limit]


class DatasetsRunner:
    def validate(self, spec) -> list[str]:
        for field, names in (("spec.required", spec.required), ("spec.optional", spec.optional)):
            for name in names:
                try:
                    canonical_name(name)
                except InvalidSpecError as exc:
                    raise InvalidSpecError(str(exc), field=field) from None
        warnings = []
        if "local_mirror" in spec.sources and not resolve_path(spec.mirror_dir).is_dir():
            warnings.append(f"mirror folder {resolve_path(spec.mirror_dir)} does not exist; "
                            f"the other sources ({', '.join(s for s in spec.sources if s != 'local_mirror') or 'none'}) "
                            f"must provide every dataset")
        if spec.tokenizer.kind == "gpt2" and not resolve_path(spec.tokenizer.gpt2_dir).is_dir():
            warnings.append(f"GPT-2 tokenizer folder {resolve_path(spec.tokenizer.gpt2_dir)} does not exist; "
                            f"the hub id 'gpt2' is used when online")
        return warnings

    def run(self, ctx):
        spec = ctx.spec
        with tempfile.TemporaryDirectory(prefix="agentforge-datasets-") as tmp:
            out = Path(tmp) / "datasets"
            prepared = prepare_datasets(
                spec, out, seed=ctx.request.seed,
                progress=lambda stage, f: ctx.progress(stage, fraction=0.8 * f))
            ctx.progress("tokenizer", fraction=0.85)
            if spec.tokenizer.kind == "gpt2":
                tokenizer = load_gpt2_tokenizer(resolve_path(spec.tokenizer.gpt2_dir))
            else:
                tokenizer = train_bpe_tokenizer(training_texts(prepared.records), spec.tokenizer.vocab_size)
            tok_dir = Path(tmp) / "tokenizer"
            save_tokenizer(tokenizer, tok_dir)
            fingerprint = tokenizer_fingerprint(tokenizer)
            rate = roundtrip_rate(tokenizer, eval_texts(prepared.records, ROUNDTRIP_SAMPLE))

            required = prepared.manifest["required"]
            present = [n for n in required if n in prepared.manifest["datasets"]]
            counts = {s: sum(d["files"][s]["count"] for d in prepared.manifest["datasets"].values())
                      for s in ("train", "val", "test")}
            metrics = {"datasets/required_available_fraction": len(present) / len(required),
                       "datasets/tokenizer_roundtrip_rate": rate,
                       **{f"datasets/records/{s}": float(n) for s, n in counts.items()}}
            ctx.progress("publishing", fraction=0.9, metrics=metrics)
            with ctx.open_artifact("tokenizer", kind="tokenizer",
                                   config={"tokenizer": spec.tokenizer.model_dump(mode="json"),
                                           "fingerprint": fingerprint}) as tw:
                tw.add_dir("tokenizer", tok_dir)
                tw.set_metrics({"datasets/tokenizer_roundtrip_rate": rate})
            with ctx.open_artifact("datasets", kind="dataset", tokenizer=None) as dw:
                dw.add_dir("data", out)
                dw.add_json("tokenizer_fingerprint.json", {"fingerprint": fingerprint})
                dw.set_metrics(metrics)
        return JobResult(artifacts=(dw.ref, tw.ref), metrics=metrics)
