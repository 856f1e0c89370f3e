"""Phase 3a — reasoning data with thinking/strategy tokens."""
