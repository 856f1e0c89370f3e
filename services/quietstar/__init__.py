"""Phase 3b — Quiet-STaR: baking and thought RL."""
