"""Phase 1 — Cognate: three diverse TRM x Titans-MAG models."""
