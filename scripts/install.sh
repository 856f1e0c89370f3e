#!/usr/bin/env bash
# The one install script: the Makefile, CI and every Dockerfile call it.
#   scripts/install.sh [--dev] [--venv DIR] [--torch cpu|cuda|cuNNN] [--deps-only]
# Creates (or reuses) a Python 3.11 virtual environment and installs the pinned requirements and the
# project itself (editable). Idempotent: a stamp file records the hash of the requirement files, so a
# second call with nothing changed returns at once.
# Options the images use (services/*/Dockerfile); without them nothing changes for CI and `make`:
#   --torch cpu|cuda|cuNNN  take torch==2.13.0 from PyTorch's wheel index for that build (cuda = cu128)
#                           instead of the configured index
#   --deps-only             the requirements only, not the project: a layer that survives source edits
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$here/.venv"
dev=0
torch=""
deps_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --venv) venv="$2"; shift ;;
    --system) venv="" ;;
    --torch) [ $# -ge 2 ] || { echo "install.sh: --torch needs a value: cpu, cuda or cuNNN" >&2; exit 2; }
             torch="$2"; shift ;;
    --deps-only) deps_only=1 ;;
    *) echo "install.sh: unknown option '$1' (use --dev, --venv DIR, --system, --torch BUILD or --deps-only)" >&2
       exit 2 ;;
  esac
  shift
done

torch_index=()
[ "$torch" = cuda ] && torch=cu128
if [[ "$torch" = cpu || "$torch" =~ ^cu[0-9]{3}$ ]]; then
  torch_index=(--index-url "https://download.pytorch.org/whl/$torch")
elif [ -n "$torch" ]; then
  echo "install.sh: --torch must be cpu, cuda or a CUDA build such as cu128, got '$torch'" >&2
  exit 2
fi

py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' \
  || { echo "install.sh: Python >= 3.11 is required; '$py' is $("$py" --version 2>&1)" >&2; exit 1; }

if [ -n "$venv" ]; then
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  py="$venv/bin/python"
  stamp="$venv/.agentforge-install"
else
  stamp="/tmp/.agentforge-install-system"
fi

files=("$here/requirements.txt" "$here/pyproject.toml")
[ "$dev" = 1 ] && files+=("$here/requirements-dev.txt")
want="$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)-dev$dev"
[ -n "$torch" ] && want+="-torch$torch"
[ "$deps_only" = 1 ] && want+="-depsonly"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

reqs=(-r "$here/requirements.txt")
[ "$dev" = 1 ] && reqs+=(-r "$here/requirements-dev.txt")
"$py" -m pip install --quiet --upgrade pip
# torch first and pinned, so nothing later can pull a different (CUDA) build. From PyTorch's index (--torch)
# it is 2.13.0+cpu / +cu128, which the later `torch==2.13.0` requirement accepts as it is.
"$py" -m pip install --quiet "${torch_index[@]}" "torch==2.13.0"
"$py" -m pip install --quiet "${reqs[@]}"
[ "$deps_only" = 1 ] || "$py" -m pip install --quiet --no-deps -e "$here"
echo "$want" > "$stamp"
echo "install.sh: environment ready in ${venv:-system python}"
