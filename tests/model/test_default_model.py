"""The default profile's model: builds on the meta device, the documented parameter table is the true one,
and one short training step runs on CPU."""

from pathlib import Path

import torch

from shared.config import load_profile
from shared.model import TRMTitansMAG, TRMTitansMAGConfig
from shared.model.params import build_on_meta, table
from shared.utils import get_model_size

DOC = Path(__file__).resolve().parents[2] / "docs" / "model.md"


def default_config(**extra) -> TRMTitansMAGConfig:
    profile = load_profile("default").phases.cognate
    variant = next(v for v in profile.variants if v.name == "reasoning")
    return TRMTitansMAGConfig.from_profile(profile.model, active_ltm_slots=variant.ltm_slots,
                                           act_threshold=variant.act_threshold, **extra)


def test_default_model_builds_on_meta_with_the_documented_count():
    model = build_on_meta(default_config())
    size = get_model_size(model)
    assert size["params"] == 60_426_777 and size["size_category"] == "small"
    assert all(p.is_meta for p in model.parameters())
    assert table() in DOC.read_text(), "docs/model.md is stale: regenerate with python -m shared.model.params"


def test_default_model_runs_one_short_training_step_on_cpu():
    torch.manual_seed(0)
    model = TRMTitansMAG(default_config(n_sup=1))
    model.train()
    ids = torch.randint(0, 50257, (1, 16))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    out = model(ids, labels=ids)
    out.loss.backward()
    opt.step()
    assert torch.isfinite(out.loss) and 9.0 < out.lm_loss.item() < 12.5   # ≈ log(50257) = 10.8 at init
