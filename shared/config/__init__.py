"""Typed, validated run configuration (profiles in configs/)."""

from shared.config.load import (
    CONFIG_DIR,
    REPO_ROOT,
    available_profiles,
    canonical_json,
    config_hash,
    load_profile,
    profile_from_dict,
    resolve_path,
)
from shared.config.schema import PHASES, STRATEGIES, Profile

__all__ = [
    "CONFIG_DIR", "PHASES", "REPO_ROOT", "STRATEGIES", "Profile", "available_profiles", "canonical_json",
    "config_hash", "load_profile", "profile_from_dict", "resolve_path",
]
