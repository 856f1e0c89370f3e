#!/usr/bin/env bash
# Run the whole test suite the way CI does: offline hub, one torch thread per process, W&B offline.
# Servers the tests need (SeaweedFS for S3, gRPC servers on loopback) are started by pytest fixtures.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 AGENTFORGE_TORCH_THREADS=1
export WANDB_MODE=offline WANDB_SILENT=true
export TORCHDYNAMO_DISABLE=1
export PYTHONDONTWRITEBYTECODE=1
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
