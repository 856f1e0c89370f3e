"""The compressed model on disk: ternary codes packed at 2 bits (or base-3), per-row int8/int4 embeddings,
everything else float32 — one safetensors file and JSON, never a pickle.

Folder layout (`save_packed`):

    packed.safetensors   the memory's initial fast weights per `memory_init_bits` (`<name>.codes` int8, or
                         int4 as two per byte like the embedding, + `<name>.scale` per row, or `<name>.f16`, or float32 under its name); per BitLinear
                         `<name>.packed` (uint8, the flat packing of services.bitnet.core.pack:
                         exactly ceil(n/4) or ceil(n/5) bytes), `<name>.scale` (γ, float32), `<name>.gain`,
                         `<name>.bias`; `embed.codes` (int8 codes, or for int4 two codes per byte, low nibble
                         first, each as code + 8) and `embed.scale` (float32 per row); every other parameter
                         and persistent buffer of the model in float32 under its own name
    bitnet.json          {"format": 1, "pack_format", "embedding_bits", "bitlinear": [names], "shapes",
                          "sha256": sha256 of packed.safetensors, "compression": {…}}
    config.json          the model's config (TRMTitansMAGConfig)
    tokenizer/, mixing_head.safetensors, quietstar.json   carried from Phase 3 when present

`load_packed` builds the model from config.json, converts the same layers to BitLinear, loads each one
frozen from its packing (the kernel's layout is prepared once, here) and the embedding from its codes; the
sha256 recorded in bitnet.json must match the file, or nothing is loaded. A reloaded model computes exactly
what the in-memory frozen one did (same codes, same scales, same kernel), so their logits are equal.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from services.bitnet.core.quant import bitlinear_modules, convert_to_bitlinear, memory_init_parameters
from shared.errors import FailedPreconditionError, InvalidSpecError
from shared.storage.formats import load_tensors, save_tensors

__all__ = ["FORMAT", "MANIFEST", "PACKED", "load_packed", "pack_nibbles", "save_packed", "unpack_nibbles"]

FORMAT = 1
PACKED = "packed.safetensors"
MANIFEST = "bitnet.json"
CARRIED = ("tokenizer", "mixing_head.safetensors", "quietstar.json")


def pack_nibbles(codes: Tensor) -> Tensor:
    """int4 codes (int8 in [−7, 7]) two per byte, low nibble first, each stored as code + 8; a flat uint8."""
    flat = codes.reshape(-1).to(torch.int16) + 8
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), 8)])
    pairs = flat.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack_nibbles(packed: Tensor, shape: tuple[int, ...], field: str = "embed.codes") -> Tensor:
    n = 1
    for s in shape:
        n *= s
    if packed.numel() != (n + 1) // 2:
        raise InvalidSpecError(f"{packed.numel()} bytes hold {2 * packed.numel()} nibbles, shape {shape} needs "
                               f"{n}", field=field)
    b = packed.to(torch.int16)
    codes = torch.stack([b & 0xF, b >> 4], 1).reshape(-1)[:n] - 8
    if (codes.abs() > 7).any():
        raise InvalidSpecError(f"an int4 code outside [−7, 7]: corrupt {field}", field=field)
    return codes.to(torch.int8).reshape(shape)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_packed(model: nn.Module, directory: str | Path, *, embedding: dict[str, Any], pack_format: str,
                carry_from: str | Path | None = None, extra: dict[str, Any] | None = None,
                memory_init_bits: int = 32, memory_init: dict[str, dict[str, Tensor]] | None = None) -> Path:
    """Write a frozen model (every BitLinear frozen) and its quantized embedding.

    embedding: {"bits": 4|8|16, "codes": int8 (V, d), "scale": float32 (V,)} (codes/scale absent for 16,
    stored as float16 then). carry_from: a Phase-3 folder whose tokenizer, mixing head and settings travel
    along. extra: JSON merged into bitnet.json (e.g. compression figures)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    layers = bitlinear_modules(model)
    if not all(m.frozen for m in layers.values()):
        raise FailedPreconditionError("freeze every BitLinear before saving the packed model")
    tensors: dict[str, Tensor] = {}
    for name, m in layers.items():
        tensors[f"{name}.packed"] = m.packed.contiguous()
        tensors[f"{name}.scale"] = m.scale.detach().float().reshape(())
        tensors[f"{name}.gain"] = m.gain.detach().float().cpu().contiguous()
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach().float().cpu().contiguous()
    bits = int(embedding["bits"])
    if bits == 16:
        tensors["embed.weight16"] = model.embed.weight.detach().to(torch.float16).cpu().contiguous()
    else:
        codes = embedding["codes"].cpu()
        tensors["embed.codes"] = codes.contiguous() if bits == 8 else pack_nibbles(codes)
        tensors["embed.scale"] = embedding["scale"].float().cpu().contiguous()
    covered = {"embed.weight", "lm_head.weight"} | {f"{n}.{p}" for n in layers for p in
                                                    ("weight", "bias", "gain", "lam", "scale")}
    inits = memory_init_parameters(model)
    for name, p in inits.items():
        if memory_init_bits in (4, 8):
            codes = memory_init[name]["codes"].cpu()
            tensors[f"{name}.codes"] = codes.contiguous() if memory_init_bits == 8 else pack_nibbles(codes)
            tensors[f"{name}.scale"] = memory_init[name]["scale"].float().cpu().contiguous()
        elif memory_init_bits == 16:
            tensors[f"{name}.f16"] = p.detach().to(torch.float16).cpu().contiguous()
        else:
            continue
        covered.add(name)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name not in covered and name in model.state_dict():
            tensors[name] = t.detach().float().cpu().contiguous()
    tied = bool(getattr(model.config, "tie_word_embeddings", True))
    if not tied:
        raise FailedPreconditionError("an untied LM head is not supported by the packed format yet")
    path = out / PACKED
    save_tensors(path, tensors, {"format": str(FORMAT)})
    model.config.to_json_file(str(out / "config.json"))
    shapes = {n: [m.out_features, m.in_features] for n, m in layers.items()}
    manifest = {"format": FORMAT, "pack_format": pack_format, "embedding_bits": bits, "bitlinear": sorted(layers),
                "memory_init_bits": memory_init_bits,
                "memory_init_shapes": {n: list(p.shape) for n, p in inits.items()},
                "shapes": shapes, "embedding_shape": list(model.embed.weight.shape), "sha256": _sha256(path),
                **(extra or {})}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if carry_from is not None:
        src = Path(carry_from)
        for name in CARRIED:
            p = src / name
            if p.is_dir():
                shutil.copytree(p, out / name, dirs_exist_ok=True)
            elif p.is_file():
                shutil.copy2(p, out / name)
    return out


def load_packed(directory: str | Path) -> nn.Module:
    """The frozen compressed model of a folder written by `save_packed` (eval mode, CPU)."""
    from shared.model import TRMTitansMAG, TRMTitansMAGConfig

    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise FailedPreconditionError(f"{root} is not a packed BitNet model: {MANIFEST} is missing")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise FailedPreconditionError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT}")
    path = root / PACKED
    if not path.is_file():
        raise FailedPreconditionError(f"{path} is missing")
    digest = _sha256(path)
    if digest != manifest["sha256"]:
        raise FailedPreconditionError(f"{path}: sha256 {digest[:12]}… does not match {MANIFEST}'s "
                                      f"{manifest['sha256'][:12]}…: the file was changed or corrupted")
    config = TRMTitansMAGConfig.from_json_file(str(root / "config.json"))
    model = TRMTitansMAG(config)
    tensors, _ = load_tensors(path)
    names = list(manifest["bitlinear"])
    converted = convert_to_bitlinear(model)
    missing = sorted(set(names) - set(converted))
    if missing:
        raise FailedPreconditionError(f"{root}: packed layers {missing[:3]} do not exist in this model")
    for name in converted:
        if name not in names:        # kept full precision (a conservative config): back to nn.Linear
            parent_name, _, child = name.rpartition(".")
            bl = model.get_submodule(name)
            lin = nn.Linear(bl.in_features, bl.out_features, bias=bl.bias is not None)
            setattr(model.get_submodule(parent_name), child, lin)
    layers = bitlinear_modules(model)
    fmt = manifest["pack_format"]
    used = set()
    for name, m in layers.items():
        with torch.no_grad():
            m.gain.copy_(tensors[f"{name}.gain"])
            if m.bias is not None:
                m.bias.copy_(tensors[f"{name}.bias"])
            m.lam.fill_(1.0)
        m.load_frozen(tensors[f"{name}.packed"], tensors[f"{name}.scale"], fmt)
        used.update(f"{name}.{p}" for p in ("packed", "scale", "gain", "bias"))
    bits = int(manifest["embedding_bits"])
    shape = tuple(manifest["embedding_shape"])
    with torch.no_grad():
        if bits == 16:
            weight = tensors["embed.weight16"].float()
            used.add("embed.weight16")
        else:
            codes = tensors["embed.codes"] if bits == 8 else unpack_nibbles(tensors["embed.codes"], shape)
            weight = codes.float() * tensors["embed.scale"][:, None]
            used.update(("embed.codes", "embed.scale"))
        if tuple(weight.shape) != shape:
            raise FailedPreconditionError(f"{root}: embedding {tuple(weight.shape)}, bitnet.json says {shape}")
        model.embed.weight.copy_(weight)
    init_bits = int(manifest.get("memory_init_bits", 32))
    for name, shape in manifest.get("memory_init_shapes", {}).items():
        if init_bits in (4, 8):
            scale = tensors[f"{name}.scale"]
            rows = (shape[0], int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
            codes = tensors[f"{name}.codes"] if init_bits == 8 else unpack_nibbles(tensors[f"{name}.codes"], rows, field=f"{name}.codes")
            tensors[name] = (codes.float().reshape(rows) * scale[:, None]).reshape(shape)
            used.update((f"{name}.codes", f"{name}.scale"))
        elif init_bits == 16:
            tensors[name] = tensors[f"{name}.f16"].float()
            used.add(f"{name}.f16")
    rest = {k: v for k, v in tensors.items() if k not in used}
    own = {k for k in model.state_dict() if not k.startswith("lm_head.") and not k.startswith("embed.")
           and not any(k.startswith(f"{n}.") for n in layers)}
    if set(rest) != own:
        raise FailedPreconditionError(f"{root}: tensors do not fit the model (unexpected "
                                      f"{sorted(set(rest) - own)[:3]}, missing {sorted(own - set(rest))[:3]})")
    model.load_state_dict(rest, strict=False)
    model.tie_weights()
    return model.eval()


def is_packed(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def dequantize(model: nn.Module) -> nn.Module:
    """A plain TRMTitansMAG (every BitLinear back to nn.Linear) for tools that know nothing of BitNet: each
    layer's weight becomes γ · codes · diag(g) — BitLinear without its int8 activation rounding (the only
    difference); embeddings and everything else as they are. Works on a frozen model (in place)."""
    for name, m in list(bitlinear_modules(model).items()):
        codes = m.codes().float()
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(codes * m.scale.float() * m.gain.detach().float()[None, :])
            if m.bias is not None:
                lin.bias.copy_(m.bias.detach().float())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, lin)
    return model


def load_any(directory: str | Path):
    """A QuietStarModel (services.quietstar.core.artifact) from a packed Phase-4 folder or a Phase-3 folder:
    the model, its tokenizer, and the mixing head when the folder has one (else thoughts are unavailable)."""
    from services.quietstar.core.artifact import HEAD_FILE, SETTINGS_FILE, QuietStarModel, load_quietstar
    from services.quietstar.core.rl import MixingHead
    from shared.data.tokenizer import load_tokenizer

    root = Path(directory)
    if not is_packed(root):
        return load_quietstar(root)
    model = load_packed(root)
    tokenizer = load_tokenizer(root / "tokenizer")
    head, settings = None, {}
    if (root / SETTINGS_FILE).is_file() and (root / HEAD_FILE).is_file():
        settings = json.loads((root / SETTINGS_FILE).read_text())
        head = MixingHead(int(settings["hidden_dim"]))
        tensors, _ = load_tensors(root / HEAD_FILE)
        head.load_state_dict(tensors, strict=True)
        head.eval()
    return QuietStarModel(model, head, tokenizer, settings)
