"""Phase 4 — BitNet 1.58-bit compression."""
