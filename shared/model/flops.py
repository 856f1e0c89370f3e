"""Counting the FLOPs a model executes (torch.utils.flop_counter), for TRMTitansMAG's recursion."""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode


class _NoModules:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break on tensors created under
    torch.no_grad inside a forward (the recursion's refinement steps); totals need no per-module attribution."""

    parents = {"Global"}
    is_bw = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TotalFlops(FlopCounterMode):
    """`with TotalFlops() as c: ...; c.get_total_flops()` — total FLOPs only (matmuls; elementwise ops are not
    counted), no display, no per-module attribution."""

    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = _NoModules()
