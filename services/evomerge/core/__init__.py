"""Phase 2 core: merge operators (merge.py), the 3-stage combos and the checklist's merge names (combos.py),
validity and identity of a merged model (validity.py),
fitness / diversity / new candidates / population memory (evolution.py) and the generation loop (loop.py).
No gRPC here."""

from services.evomerge.core.evolution import (compute_diversity, evaluate_fitness, generate_new_models,
                                              manage_population_memory)
from services.evomerge.core.combos import MergeHyper, apply_merge_combo, combo_stages, linear_merge, merge
from services.evomerge.core.validity import Validity, is_valid_model, model_hash

__all__ = ["MergeHyper", "Validity", "apply_merge_combo", "combo_stages", "compute_diversity", "evaluate_fitness",
           "generate_new_models", "is_valid_model", "linear_merge", "manage_population_memory", "merge", "model_hash"]
