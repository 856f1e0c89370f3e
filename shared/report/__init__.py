"""The run report (`agentforge report RUN_ID`): an HTML page with PNG plots of a run's series — loss per
model, halting histograms, the loss barrier between parents, fitness and diversity per generation, baking
accuracy per strategy, RL reward and anti-theater checks, per-block and per-layer quantization cost — the
final benchmarks and which source each dataset came from. Everything plotted comes from the run's events
in the coordinator's state (data.py); a plot with no data is not drawn and the page says why."""

from shared.report.build import Report, build_report
from shared.report.data import RunData, load_run
from shared.report.render import write_report

__all__ = ["Report", "RunData", "build_report", "load_run", "write_report"]
