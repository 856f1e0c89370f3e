"""Phase 4 BitNet core: packed ternary storage (pack), the ternary × int8 kernel (kernel), BitLinear and the
compression configs (quant), the packed model on disk (packed), the phase job (job) and its stage checkpoints
(checkpoint).

Checklist names owned here (tests/test_checklist_names.py): get_compression_config,
get_conservative_compression_config, load_calibration_data, calibrate_quantization, quantize_layer,
evaluate_accuracy, fine_tune_compressed, measure_sparsity, measure_speedup.
"""

from services.bitnet.core.job import (
    calibrate_quantization,
    evaluate_accuracy,
    fine_tune_compressed,
    load_calibration_data,
    measure_speedup,
    quantize_layer,
)
from services.bitnet.core.quant import get_compression_config, get_conservative_compression_config, measure_sparsity

__all__ = [
    "calibrate_quantization", "evaluate_accuracy", "fine_tune_compressed", "get_compression_config",
    "get_conservative_compression_config", "load_calibration_data", "measure_speedup", "measure_sparsity",
    "quantize_layer",
]
