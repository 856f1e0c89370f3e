"""Loading and hashing profiles.

`load_profile("tiny")` reads configs/tiny.yaml; `load_profile(path)` reads any YAML file. Every error is a
ConfigError that names the file and the dotted key (e.g. `configs/tiny.yaml: phases.cognate.batch_size:
Input should be greater than or equal to 1 (got 0)`).

Relative paths inside a profile (mirror_dir, gpt2_dir) are resolved against the repository root by
`resolve_path`, so shipped profiles work from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.canonical import config_hash as _hash
from shared.canonical import dumps_canonical as canonical_json  # noqa: F401 - re-exported
from shared.config.schema import Profile
from shared.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


def available_profiles() -> list[str]:
    """Names of the shipped profiles (configs/*.yaml)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _locate(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"unknown profile '{name_or_path}'; shipped profiles: "
                          f"{', '.join(available_profiles())} (or pass a path to a .yaml file)")
    return candidate


def _format_error(err: dict[str, Any]) -> tuple[str, str]:
    key = ".".join(str(part) for part in err["loc"]) or "<root>"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check spelling; see shared/config/schema.py for the fields)"
    elif err["type"] == "missing":
        msg = "missing key: every profile must set it"
    elif "input" in err and err["type"] not in ("model_type",):
        msg = f"{msg} (got {err['input']!r})"
    return key, msg


def profile_from_dict(data: Any, *, source: str = "<dict>") -> Profile:
    """Validate a dict as a Profile; raise ConfigError naming each bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"a profile must be a mapping, got {type(data).__name__}", source=source)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        problems = [_format_error(e) for e in exc.errors(include_url=False)]
        first_key, first_msg = problems[0]
        more = "".join(f"; {k}: {m}" for k, m in problems[1:5])
        raise ConfigError(first_msg + more, field=first_key, source=source) from None


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name or a YAML file by path."""
    path = _locate(name_or_path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None
    return profile_from_dict(data, source=source)


def config_hash(config: Profile | dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a config (a Profile or any section's dict)."""
    return _hash(config.model_dump(mode="json") if isinstance(config, Profile) else config)


def resolve_path(value: str) -> Path:
    """Resolve a path from a profile: absolute stays, relative is taken from the repository root."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()
