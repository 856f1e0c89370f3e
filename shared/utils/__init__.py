"""Utilities every phase uses: model size, memory and batch size, loss-curve health, pre-flight checks."""

from shared.utils.activation_probe import ActivationProfile, infer_vocab_size, profile_activations
from shared.utils.dataset_check import (
    CHECKLIST_DATASETS,
    HUB_IDS,
    DatasetSource,
    DatasetUnavailableError,
    hub_is_offline,
    validate_dataset_availability,
)
from shared.utils.memory import (
    OPTIMIZER_STATES,
    InsufficientMemoryError,
    MemoryEstimate,
    calculate_safe_batch_size,
    estimate_training_memory,
)
from shared.utils.model_size import SIZE_CATEGORIES, get_model_size, size_category
from shared.utils.preflight import (
    STORAGE_REQUIREMENTS_GB,
    check_storage_requirements,
    cuda_probe,
    wait_for_gpu,
)
from shared.utils.training_health import (
    DivergenceError,
    NonFiniteLossError,
    PlateauError,
    TrainingIssue,
    detect_training_issues,
)

__all__ = [
    "ActivationProfile",
    "CHECKLIST_DATASETS",
    "DatasetSource",
    "DatasetUnavailableError",
    "DivergenceError",
    "HUB_IDS",
    "InsufficientMemoryError",
    "MemoryEstimate",
    "NonFiniteLossError",
    "OPTIMIZER_STATES",
    "PlateauError",
    "SIZE_CATEGORIES",
    "STORAGE_REQUIREMENTS_GB",
    "TrainingIssue",
    "calculate_safe_batch_size",
    "check_storage_requirements",
    "cuda_probe",
    "detect_training_issues",
    "estimate_training_memory",
    "get_model_size",
    "hub_is_offline",
    "infer_vocab_size",
    "profile_activations",
    "size_category",
    "validate_dataset_availability",
    "wait_for_gpu",
]
