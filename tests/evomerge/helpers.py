"""Tiny TRMTitansMAG families for the EvoMerge tests: an ancestor and three parents that each moved a little
away from it (same basin, as after Phase 1's shared warm-up), with different halting thresholds and memory
capacities."""

import copy

import torch

from tests.model.helpers import tiny_model

THRESHOLDS = (0.8, 0.6, 0.4)
CAPACITIES = (16, 8, 12)
IDS = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(7))


def moved(model, seed: int, scale: float = 0.02):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return out


def with_capacity(model, slots: int, act: float):
    for layer in model.net.layers:
        layer.memory.set_active_slots(slots)
    model.config.active_ltm_slots = slots
    model.config.act_threshold = act
    return model


def make_family(num_layers: int = 2):
    ancestor = tiny_model(0, num_layers=num_layers).eval()
    parents = [with_capacity(moved(ancestor, 10 + i), c, a).eval()
               for i, (c, a) in enumerate(zip(CAPACITIES, THRESHOLDS))]
    return ancestor, parents


def fitness_batches():
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(8))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)   # already shifted (Phase-1 form)
    return [{"input_ids": ids, "labels": labels}]
