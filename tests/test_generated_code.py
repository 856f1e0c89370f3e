"""The committed gRPC code is exactly what `make proto` generates from proto/."""

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_code_matches_proto(tmp_path):
    env_python = Path(sys.executable)
    subprocess.run([str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": str(env_python), "PATH": "/usr/bin:/bin"})
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "agentforge").rglob("*") if p.is_file())
    committed = sorted(p.relative_to(REPO) for p in (REPO / "agentforge").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == committed, "generated file set differs: run `make proto` and commit"
    protos = sorted((REPO / "proto" / "agentforge" / "v1").glob("*.proto"))
    assert len([p for p in fresh if p.name.endswith("_pb2.py")]) == len(protos)
    differing = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, REPO / p, shallow=False)]
    assert not differing, f"stale generated code (run `make proto`): {differing}"


def test_generated_imports_are_package_qualified():
    for path in (REPO / "agentforge" / "v1").glob("*_pb2*.py"):
        text = path.read_text()
        for line in text.splitlines():
            if line.startswith("import ") and "_pb2" in line:
                raise AssertionError(f"{path.name}: unqualified import: {line}")
    from agentforge.v1 import bitnet_pb2_grpc, cognate_pb2, job_pb2  # noqa: F401
