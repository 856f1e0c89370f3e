"""Phase 2 — EvoMerge: evolved merge champion."""
