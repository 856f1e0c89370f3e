"""The compressed model against fp32 at the `default` shape (issue #10), on CPU, in one run: decode tokens/s of
the same model in fp32 and packed (BitLinear layers on the ternary kernel), and the sizes — whole artifact and
BitLinear-only compression beside the 20.25× limit of 1.58 bits vs fp32, for int8 and int4 embeddings and
both packings.

    .venv/bin/python bench/bitnet_model_bench.py [--shape default] [--context 32] [--new-tokens 4] [--out FILE]

The model is the profile's shape with seeded random weights (speed and size do not depend on what it knows;
the accuracy drop is measured on the trained tiny model by bench/bitnet_phase_bench.py). Both models run the
same eval-mode recursion with every supervision step (act_threshold 1: halting could otherwise differ between
them and make the comparison one of depth, not of arithmetic); the executed steps are reported. Appends to bench/RESULTS.md (or
--out).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine_line, offline_env  # noqa: E402 - bench/ is not a package


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="default", help="profile whose cognate.model shape is used")
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    offline_env()
    import copy

    import torch

    from services.bitnet.core.kernel import available_backends
    from services.bitnet.core.packed import PACKED, load_packed, save_packed
    from services.bitnet.core.quant import (bitlinear_modules, convert_to_bitlinear, quantize_memory_inits,
                                            quantize_rows, set_lambda)
    from shared.config import load_profile
    from shared.model import TRMTitansMAG, TRMTitansMAGConfig
    from shared.utils import get_model_size

    cfg = load_profile(args.shape).phases.cognate.model
    torch.manual_seed(0)
    fp = TRMTitansMAG(TRMTitansMAGConfig.from_profile(cfg, active_ltm_slots=cfg.ltm_slots)).eval()
    fp_bytes = 4 * get_model_size(fp)["params"]
    ids = torch.randint(0, cfg.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(1))

    def decode(model) -> tuple[float, float]:
        """(tokens/s, mean executed supervision steps) of greedy decoding `new_tokens` tokens, best of 2."""
        best, steps = float("inf"), 0.0
        with torch.no_grad():
            for _ in range(2):
                seq, t, s = ids, time.perf_counter(), []
                for _ in range(args.new_tokens):
                    out = model(seq, act_threshold=1.0)   # every supervision step: the same work for both
                    s.append(float(out.halting_steps[:, -1].float().mean()))
                    seq = torch.cat([seq, out.logits[:, -1:].argmax(-1)], 1)
                best = min(best, time.perf_counter() - t)
                steps = sum(s) / len(s)
        return args.new_tokens / best, steps

    def linear_share(model, layer_names) -> tuple[float, float]:
        """(seconds of one forward over the context, seconds of it inside the converted linear layers), timed
        with forward hooks, after one warm-up forward."""
        spent = [0.0]
        hooks = []
        for n in layer_names:
            m = model.get_submodule(n)
            hooks.append(m.register_forward_pre_hook(lambda mod, _i: setattr(mod, "_t0", time.perf_counter())))
            hooks.append(m.register_forward_hook(
                lambda mod, _i, _o: spent.__setitem__(0, spent[0] + time.perf_counter() - mod._t0)))
        try:
            with torch.no_grad():
                model(ids, act_threshold=1.0)
                spent[0] = 0.0
                t = time.perf_counter()
                model(ids, act_threshold=1.0)
                return time.perf_counter() - t, spent[0]
        finally:
            for h in hooks:
                h.remove()

    names = convert_to_bitlinear(copy.deepcopy(fp))       # the layers the packed model converts
    rows = []
    with tempfile.TemporaryDirectory(prefix="bitnet-model-bench-") as tmp:
        packed_models = {}
        for fmt, bits, init_bits in (("2bit", 8, 32), ("2bit", 8, 8), ("2bit", 4, 8), ("base3", 4, 8),
                                     ("2bit", 4, 4), ("base3", 4, 4)):
            model = copy.deepcopy(fp)
            convert_to_bitlinear(model)
            layers = bitlinear_modules(model)
            set_lambda(layers, 1.0)
            for m in layers.values():
                m.freeze(fmt)
            codes, scale = quantize_rows(model.embed.weight, bits)
            with torch.no_grad():
                model.embed.weight.copy_(codes.float() * scale[:, None])
            inits = quantize_memory_inits(model, init_bits)
            out = save_packed(model, Path(tmp) / f"{fmt}-{bits}-{init_bits}",
                              embedding={"bits": bits, "codes": codes, "scale": scale}, pack_format=fmt,
                              memory_init_bits=init_bits, memory_init=inits)
            size = (out / PACKED).stat().st_size
            bl_fp = sum(4 * m.out_features * m.in_features for m in layers.values())
            bl_packed = sum(m.packed.numel() + 4 for m in layers.values())
            rows.append((fmt, bits, init_bits, size, fp_bytes / size, bl_fp / bl_packed))
            packed_models[(fmt, bits, init_bits)] = out
        fp_rate, fp_steps = decode(fp)
        fp_split = linear_share(fp, names)
        q = load_packed(packed_models[("2bit", 8, 32)])
        q_rate, q_steps = decode(q)
        q_split = linear_share(q, names)
    lines = [
        f"## bitnet_model_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        machine_line(),
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads; kernel backends {available_backends()}; "
        f"shape `{args.shape}` (d={cfg.hidden_dim}, {cfg.num_layers} layers, vocab {cfg.vocab_size}, "
        f"n_sup {cfg.n_sup}, T {cfg.t_cycles}, n {cfg.n_latent_steps}), seeded random weights; fp32 "
        f"{fp_bytes / 2**20:.1f} MiB",
        "",
        "| packing | embeddings | memory init | packed.safetensors | whole artifact vs fp32 | BitLinear-only vs fp32 "
        "| limit |",
        "|---|---|---|---:|---:|---:|---:|",
        *[f"| {fmt} | int{bits} | {f'int{ib} rows' if ib in (4, 8) else f'float{ib}'} | {size / 2**20:.2f} MiB | {whole:.2f}× "
          f"| {bl:.2f}× | 20.25× |" for fmt, bits, ib, size, whole, bl in rows],
        "",
        f"Decode, context {args.context} + {args.new_tokens} new tokens, batch 1, greedy, no cache (best of 2):",
        "",
        "| model | tokens/s | executed supervision steps (mean) |",
        "|---|---:|---:|",
        f"| fp32 | {fp_rate:.3f} | {fp_steps:.2f} |",
        f"| packed (2bit, int8 embeddings, float32 memory init) | {q_rate:.3f} | {q_steps:.2f} |",
        f"| **speedup** | **{q_rate / fp_rate:.2f}×** | |",
        "",
        f"Where one forward over the {args.context} context tokens goes (forward hooks on the {len(names)} converted "
        "layers; no KV cache, so every decode step recomputes the whole sequence and the layers see that many rows):",
        "",
        "| model | forward s | in the converted linear layers s | share |",
        "|---|---:|---:|---:|",
        f"| fp32 | {fp_split[0]:.3f} | {fp_split[1]:.3f} | {fp_split[1] / fp_split[0]:.0%} |",
        f"| packed | {q_split[0]:.3f} | {q_split[1]:.3f} | {q_split[1] / q_split[0]:.0%} |",
        "",
    ]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
