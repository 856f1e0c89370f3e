"""Warm-up to an ancestor, then three variants with their own capacity, threshold, seed and mix (ci profile,
real prepared data); bad mixtures fail before training."""

import pytest
import torch

from services.cognate.core.data import load_cognate_data_from
from services.cognate.core.runner import check_mixes, schedule, train_all
from services.dataset.core.prepare import prepare_datasets
from services.dataset.core.runner import training_texts
from shared.config import load_profile
from shared.data.tokenizer import save_tokenizer, train_bpe_tokenizer
from shared.errors import InvalidSpecError

CI = load_profile("ci")


@pytest.fixture(scope="module")
def data(tmp_path_factory, datasets_dir):
    root = tmp_path_factory.mktemp("cognate-data")
    spec = CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)})
    prepared = prepare_datasets(spec, root / "data", seed=1)
    save_tokenizer(train_bpe_tokenizer(training_texts(prepared.records), spec.tokenizer.vocab_size), root / "tok")
    return load_cognate_data_from(root / "data", root / "tok")


def test_three_variants_branch_from_one_ancestor(data):
    models, metrics = train_all(CI.phases.cognate, data)
    warmup, totals = schedule(CI.phases.cognate)
    assert warmup >= 1 and all(t > warmup for t in totals.values())
    ancestor = models["ancestor"]
    for v in CI.phases.cognate.variants:
        m = models[v.name]
        assert int(m.net.layers[0].memory.mask.sum()) == v.ltm_slots and m.config.act_threshold == v.act_threshold
        moved = [n for (n, a), b in zip(ancestor.state_dict().items(), m.state_dict().values())
                 if a.dtype.is_floating_point and not torch.equal(a, b)]
        assert moved, f"{v.name} did not train after the branch point"
        assert {k: float(x) for k, x in metrics[v.name].items()} == metrics[v.name]
    # same shapes everywhere: merging needs no padding
    shapes = {name: {k: tuple(t.shape) for k, t in m.state_dict().items()} for name, m in models.items()}
    assert len({tuple(sorted(s.items())) for s in shapes.values()}) == 1


def test_a_mixture_that_names_no_present_category_fails_before_training(data):
    spec = CI.phases.cognate
    only_code = spec.variants[0].mix.model_copy(update={"math": 0.0, "qa": 0.0, "commonsense": 0.0,
                                                         "language": 0.0, "code": 1.0})
    bad = spec.model_copy(update={"variants": [spec.variants[0].model_copy(update={"mix": only_code}),
                                               *spec.variants[1:]]})
    no_code = data.__class__(**{**data.__dict__, "train": {k: v for k, v in data.train.items()
                                                           if k not in ("MBPP", "CodeXGLUE")}})
    with pytest.raises(InvalidSpecError, match=r"spec.variants\[0\].mix"):
        check_mixes(bad, no_code)
