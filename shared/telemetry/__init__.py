"""Telemetry: logging with secret redaction, W&B runs, metric names and CLI progress bars."""

from shared.telemetry import metric_names
from shared.telemetry.logs import (
    SecretRedactingFilter,
    configure_logging,
    current_secrets,
    register_secret,
)
from shared.telemetry.progress import progress_bar
from shared.telemetry.wandb_run import Telemetry, resolve_mode

__all__ = [
    "SecretRedactingFilter",
    "Telemetry",
    "configure_logging",
    "current_secrets",
    "metric_names",
    "progress_bar",
    "register_secret",
    "resolve_mode",
]
