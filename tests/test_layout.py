"""The project's standing promises: two commands in the README, CI calls make test, layout in place."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    head = text[: text.index("## Layout")]
    assert "make run" in head and "make test" in head


def test_ci_runs_make_test():
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_layout_of_the_design_card():
    for path in ("proto/agentforge/v1", "shared", "services", "configs", "tests", "bench", "k8s",
                 "compose.yaml", "Makefile", "README.md", "pyproject.toml", ".ci/run", "scripts/install.sh"):
        assert (REPO / path).exists(), path


def test_compose_store_takes_credentials_from_env_and_has_a_healthcheck():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    minio = compose["services"]["minio"]
    assert "healthcheck" in minio
    env = minio["environment"]
    assert all(v.startswith("${") for v in env.values()), "credentials must come from .env"
    assert compose["services"]["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
