"""The parameter table of a model config (the checklist's get_model_size plus a per-part breakdown).

    .venv/bin/python -m shared.model.params [profile ...]   prints the Markdown table in docs/model.md

Counts are exact (the model is built on the meta device: no memory is touched). Tied embeddings count once.
"""

from __future__ import annotations

import sys

import torch

from shared.config import load_profile
from shared.model.config import TRMTitansMAGConfig
from shared.model.modeling import TRMTitansMAG
from shared.utils import get_model_size

PARTS = (("token embedding (tied with the LM head)", ("embed.",)),
         ("attention q/k/v/o + persistent tokens", (".attn.",)),
         ("neural memory (projections, rates, initial fast weights)", (".memory.",)),
         ("memory→gate projection", (".gate.",)),
         ("MLP", (".up.", ".down.")),
         ("norms, y/z initial states, halting head", ("norm", "y_init", "z_init", "halt_head")))


def build_on_meta(cfg: TRMTitansMAGConfig) -> TRMTitansMAG:
    with torch.device("meta"):
        return TRMTitansMAG(cfg)


def breakdown(model: TRMTitansMAG) -> dict[str, int]:
    out = {label: 0 for label, _ in PARTS}
    for name, p in model.named_parameters():  # named_parameters drops the tied duplicate
        label = next(lbl for lbl, keys in PARTS if any(k in name for k in keys))
        out[label] += p.numel()
    return out


def table(profiles=("default", "tiny", "ci")) -> str:
    lines = ["| profile | layers × width | ltm_slots × memory_dim | " + " | ".join(l for l, _ in PARTS)
             + " | total | size MB (fp32) | category |",
             "|---|---|---|" + "---:|" * (len(PARTS) + 3)]
    for name in profiles:
        m = load_profile(name).phases.cognate.model
        model = build_on_meta(TRMTitansMAGConfig.from_profile(m))
        parts = breakdown(model)
        size = get_model_size(model)
        lines.append(f"| {name} | {m.num_layers} × {m.hidden_dim} | {m.ltm_slots} × {m.memory_dim} | "
                     + " | ".join(f"{parts[l]:,}" for l, _ in PARTS)
                     + f" | {size['params']:,} | {size['size_mb']:.1f} | {size['size_category']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(tuple(sys.argv[1:]) or ("default", "tiny", "ci")))
