"""The dataset phase's core: adapters for each publisher's format, sources, splits and preparation."""
