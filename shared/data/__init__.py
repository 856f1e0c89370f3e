"""Data shared by every phase: the record schema, tokenizers, special tokens, the curriculum."""
