"""Fixtures of the end-to-end tests: one LocalCluster for the package (coordinator + six phase services as
processes, SeaweedFS as S3, auth on, one torch thread each), a client of it, and the upstream artifacts the
fault tests start from.

Tests share the cluster; `e2e` hands it to a test and puts it back in shape afterwards (a service a test
killed is restarted, a run it left going is cancelled), so no test inherits another's fault or lease.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from shared.config import load_profile
from shared.deploy.local import LocalCluster
from shared.deploy.seaweed import SKIP_REASON, find_weed
from shared.storage import ArtifactRef
from tests.e2e.harness import Client

CI = load_profile("ci")


def prebuilt_kernel() -> dict[str, dict[str, str]]:
    """The bitnet service's environment for a prebuilt BitNet kernel, as its image carries one: built once per
    machine under torch's extension cache (about 20 s cold, then an up-to-date check), so the service does
    not compile it in every test session. Empty (the service compiles or falls back itself) if it cannot
    be built here."""
    from torch.utils.cpp_extension import get_default_build_root

    from services.bitnet.core.kernel import KERNEL_DIR_ENV, build_prebuilt

    out = Path(get_default_build_root()) / "agentforge-e2e-bitnet-kernel"
    try:
        build_prebuilt(out)
    except Exception:  # noqa: BLE001 - no compiler here: the service reports and uses its fallback
        return {}
    return {"bitnet": {KERNEL_DIR_ENV: str(out)}}


@pytest.fixture(scope="package")
def cluster(tmp_path_factory, datasets_dir):
    if find_weed() is None:
        pytest.skip(SKIP_REASON)
    c = LocalCluster(tmp_path_factory.mktemp("e2e-cluster"), ready_timeout_s=180, extra_env=prebuilt_kernel())
    started = time.monotonic()
    c.start()
    print(f"\ne2e cluster SERVING in {time.monotonic() - started:.1f} s ({c.dir})")
    yield c
    c.stop()


@pytest.fixture(scope="package")
def client(cluster):
    c = Client(cluster)
    yield c
    c.close()


@pytest.fixture
def e2e(cluster, client):
    """The shared cluster's client; afterwards every service runs again and no run is left going."""
    yield client
    for name in cluster.exited():
        cluster.restart(name)
    client.reconnect()
    client.cancel_unfinished()


@dataclass(frozen=True)
class Upstream:
    """Published-style artifacts in the cluster's bucket, standing in for skipped phases."""

    datasets: tuple[ArtifactRef, ...]       # the datasets job's "datasets" and "tokenizer"
    reasoning_data: tuple[ArtifactRef, ...]
    champion: ArtifactRef                   # for quietstar: a ci-shaped model (seeded random init)
    phase3_model: ArtifactRef               # for bitnet: the same model with the thinking tokens and a mixing head

    def quietstar_inputs(self) -> tuple[ArtifactRef, ...]:
        return (self.champion, *self.reasoning_data, *self.datasets)

    def bitnet_inputs(self) -> tuple[ArtifactRef, ...]:
        return (self.phase3_model, *self.reasoning_data, *self.datasets)


def _publish(store, key: str, name: str, folder: Path, config: dict) -> ArtifactRef:
    with store.open_artifact(key, kind="model", name=name, tokenizer="tokenizer", config=config) as w:
        for f in sorted(folder.iterdir()):
            w.add_dir(f.name, f) if f.is_dir() else w.add_file(f.name, f)
    return w.ref


@pytest.fixture(scope="package")
def upstream(client, datasets_dir, tmp_path_factory) -> Upstream:
    """The ci profile's datasets and reasoning-data jobs run in this process into the cluster's bucket (a few
    seconds), and two untrained ci-shaped models: the job mechanics under test do not depend on what a
    model knows, and training them would only cost time."""
    from services.quietstar.core.artifact import save_quietstar
    from services.quietstar.core.rl import MixingHead
    from services.quietstar.core.tokens import add_thinking_tokens
    from shared.data.tokenizer import load_tokenizer, save_tokenizer
    from shared.model import TRMTitansMAG, TRMTitansMAGConfig, save_model
    from shared.runtime import JobRegistry, JobRequest, JobState, get_phase

    store = client.store
    jobs = {}
    for phase, spec, inputs in (("datasets", CI.phases.datasets.model_copy(update={"mirror_dir": str(datasets_dir)}), ()),
                                ("reasoning_data", CI.phases.reasoning_data, None)):
        registry = JobRegistry(get_phase(phase), store)
        job = registry.submit(JobRequest(request_id=f"e2e-fixture-{phase}", phase=phase, seed=CI.seed,
                                         inputs=jobs["datasets"].artifacts if inputs is None else inputs), spec)
        assert job.done.wait(300) and job.state is JobState.SUCCEEDED, f"{phase} fixture: {job.error}"
        registry.shutdown()
        jobs[phase] = job
    work = tmp_path_factory.mktemp("e2e-upstream")
    tok_ref = next(r for r in jobs["datasets"].artifacts if r.name == "tokenizer")
    tokenizer = load_tokenizer(store.fetch(tok_ref, work / "tokenizer") / "tokenizer")
    torch.manual_seed(0)
    shape = CI.phases.cognate.model
    model = TRMTitansMAG(TRMTitansMAGConfig.from_profile(shape, active_ltm_slots=shape.ltm_slots))
    save_model(model, work / "champion")
    save_tokenizer(tokenizer, work / "champion" / "tokenizer")
    champion = _publish(store, "fixtures/e2e/champion", "champion", work / "champion", model.config.to_dict())
    add_thinking_tokens(model, tokenizer, verbose=False)
    folder = save_quietstar(model, MixingHead(shape.hidden_dim), tokenizer,
                            {"thought_length": 2, "num_thoughts": 2, "lookahead_tokens": 2}, work / "phase3")
    phase3 = _publish(store, "fixtures/e2e/phase3-model", "model", folder, model.config.to_dict())
    return Upstream(datasets=tuple(jobs["datasets"].artifacts), reasoning_data=tuple(jobs["reasoning_data"].artifacts),
                    champion=champion, phase3_model=phase3)
