"""One small real pipeline run (tests/report/pipeline.py) shared by every test module here: about a minute."""

import pytest

from tests.report.pipeline import run_small_pipeline


@pytest.fixture(scope="package")
def pipeline(tmp_path_factory, datasets_dir):
    return run_small_pipeline(tmp_path_factory.mktemp("run"), datasets_dir)
