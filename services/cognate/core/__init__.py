"""Phase 1 core: training the ancestor and the three specialised models (no gRPC here)."""
