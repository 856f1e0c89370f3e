"""Phase 0 — datasets: curriculum, tokenizer, evaluation sets."""
