"""The project's optimizer: MuonGrokfast (DESIGN.md §5) and the pieces it is made of."""

from shared.optim.grokfast import grokfast_ema_
from shared.optim.muon_grokfast import PRESETS, MuonGrokfast
from shared.optim.qk_clip import QKClipTarget, apply_qk_clip, qk_clip_scales
from shared.optim.roles import ADAMW_ROLES, MUON_ROLE, ROLES, UNTAGGED, param_groups_report

__all__ = [
    "ADAMW_ROLES",
    "MUON_ROLE",
    "PRESETS",
    "ROLES",
    "UNTAGGED",
    "MuonGrokfast",
    "QKClipTarget",
    "apply_qk_clip",
    "grokfast_ema_",
    "param_groups_report",
    "qk_clip_scales",
]
