#!/usr/bin/env bash
# Generate the Python gRPC code for proto/agentforge/v1/*.proto into OUT (default: the repo root), so the
# modules land in OUT/agentforge/v1/ and import each other package-qualified (from agentforge.v1 import …).
#   scripts/gen_proto.sh [OUT]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$here}"
py="${PYTHON:-$here/.venv/bin/python}"
mkdir -p "$out/agentforge/v1"
cd "$here/proto"
"$py" -m grpc_tools.protoc -I . --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" agentforge/v1/*.proto
printf '"""Generated protobuf/gRPC code (package agentforge.v1). Do not edit: run `make proto`."""\n' \
  > "$out/agentforge/__init__.py"
cp "$out/agentforge/__init__.py" "$out/agentforge/v1/__init__.py"
