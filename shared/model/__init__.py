"""The model family every phase uses: TRMTitansMAG (TRM recursion × Titans memory-as-gate layers)."""

from shared.model.config import TRMTitansMAGConfig
from shared.model.modeling import TRMTitansMAG, TRMOutput
from shared.model.io import load_model, save_model

__all__ = ["TRMOutput", "TRMTitansMAG", "TRMTitansMAGConfig", "load_model", "save_model"]
