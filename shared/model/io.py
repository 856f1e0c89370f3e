"""Saving and loading models as safetensors + JSON (save_pretrained/from_pretrained), never pickle.

`load_model(path)` is the checklist's name; it refuses a directory without config.json/model.safetensors
and anything that is not our model family.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import FailedPreconditionError, NotFoundError
from shared.model.config import TRMTitansMAGConfig
from shared.model.modeling import TRMTitansMAG


def save_model(model: TRMTitansMAG, directory: str | Path) -> Path:
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def load_model(directory: str | Path, **kwargs) -> TRMTitansMAG:
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise NotFoundError(f"{directory} has no config.json: not a saved model")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != TRMTitansMAGConfig.model_type:
        raise FailedPreconditionError(f"{directory} holds a '{model_type}' model, not "
                                      f"'{TRMTitansMAGConfig.model_type}'")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise NotFoundError(f"{directory} has no .safetensors weights (pickled weights are never loaded)")
    from shared.storage.formats import check_safetensors_file  # the store stack is only needed here

    for path in weights:
        check_safetensors_file(path)
    return TRMTitansMAG.from_pretrained(directory, use_safetensors=True, **kwargs)
