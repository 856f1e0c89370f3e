"""Saving and loading models as safetensors + JSON (save_pretrained/from_pretrained), never pickle.

`load_model(path)` is the checklist's name; it refuses a directory without config.json/model.safetensors
and anything that is not our model family.

Why `safetensors_weight_files` exists: `from_pretrained(use_safetensors=True)` alone does not keep pickles
out. A config.json may name its own weights file (`transformers_weights`, which may be `adapter_model.bin`),
and a `model.safetensors.index.json` may map tensors to any shard file; transformers reads a shard that does
not end in .safetensors with `torch.load`. So the files transformers will read are worked out here first,
and every one must be a structurally valid safetensors file inside the folder, or nothing is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import FailedPreconditionError, NotFoundError, UnsafeFormatError
from shared.model.config import TRMTitansMAGConfig
from shared.model.modeling import TRMTitansMAG

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
_NEVER = "pickled weights (pytorch_model.bin, torch.save files) are never loaded; re-save with safetensors"


def save_model(model: TRMTitansMAG, directory: str | Path) -> Path:
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def safetensors_weight_files(directory: str | Path) -> list[Path]:
    """The weight files `from_pretrained(directory, use_safetensors=True)` reads, each checked to be
    safetensors: `model.safetensors`, else the shards of `model.safetensors.index.json`.

    UnsafeFormatError for a config.json that names its own weights file, a shard that is not a .safetensors
    file directly in the folder, or a file that is not safetensors inside; NotFoundError without weights.
    """
    from shared.storage.formats import check_safetensors_file, load_json  # the store stack is only needed here

    directory = Path(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if isinstance(config, dict) and "transformers_weights" in config:
        raise UnsafeFormatError(f"{config_path} names its own weights file "
                                f"({config['transformers_weights']!r} in transformers_weights); refused: only "
                                f"{SAFE_WEIGHTS} or the shards of {SAFE_WEIGHTS_INDEX} are loaded, and {_NEVER}")
    index_path = directory / SAFE_WEIGHTS_INDEX
    if (directory / SAFE_WEIGHTS).is_file():
        files = [directory / SAFE_WEIGHTS]
    elif index_path.is_file():
        index = load_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UnsafeFormatError(f"{index_path} has no weight_map of tensor name -> shard file")
        files = []
        for shard in sorted({str(v) for v in weight_map.values()}):
            if not shard.endswith(".safetensors") or Path(shard).name != shard or shard.startswith("."):
                raise UnsafeFormatError(f"{index_path} maps tensors to {shard!r}, which is not a .safetensors "
                                        f"file in {directory}; {_NEVER}")
            files.append(directory / shard)
    else:
        raise NotFoundError(f"{directory} has no {SAFE_WEIGHTS} (or {SAFE_WEIGHTS_INDEX}); {_NEVER}")
    for path in files:
        if not path.is_file():
            raise NotFoundError(f"{path} is missing (named by {index_path.name})")
        check_safetensors_file(path)
    return files


def load_model(directory: str | Path, **kwargs) -> TRMTitansMAG:
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise NotFoundError(f"{directory} has no config.json: not a saved model")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != TRMTitansMAGConfig.model_type:
        raise FailedPreconditionError(f"{directory} holds a '{model_type}' model, not "
                                      f"'{TRMTitansMAGConfig.model_type}'")
    safetensors_weight_files(directory)
    return TRMTitansMAG.from_pretrained(directory, use_safetensors=True, **kwargs)
