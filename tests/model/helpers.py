"""Tiny configurations for model tests (CPU, seconds)."""

import torch

from shared.model import TRMTitansMAG, TRMTitansMAGConfig


def tiny_config(**overrides) -> TRMTitansMAGConfig:
    base = dict(vocab_size=48, hidden_dim=32, num_layers=2, num_heads=2, max_seq_len=64, window=4,
                persistent_tokens=2, ltm_slots=16, memory_dim=8, memory_chunk_size=4, memory_theta_max=1.0,
                n_latent_steps=2, t_cycles=2, n_sup=3, act_threshold=0.6, dropout=0.0)
    base.update(overrides)
    return TRMTitansMAGConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> TRMTitansMAG:
    torch.manual_seed(seed)
    model = TRMTitansMAG(tiny_config(**overrides))
    # make the memory actually learn in-context (θ well above zero) so memory paths matter in tests
    for layer in model.net.layers:
        with torch.no_grad():
            layer.memory.to_rates.bias[1] = 1.0
    return model.double()
