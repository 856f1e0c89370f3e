"""A pickle placed where a checkpoint or a model file should be is refused and never unpickled: the
payloads (tests/storage/unsafe.py) create a marker file when unpickled, and `no_unpickling` turns any call
into pickle or torch.load into a failure, so "refused" cannot mean "unpickled, then rejected".

Covered here: the runtime's checkpoint resume (JobContext.latest_checkpoint / load_checkpoint_tensors, which
every phase's resume goes through), the model loaders (shared.model.load_model, the Phase-3 loader
load_quietstar, the Phase-4 loaders load_packed / load_any, the local teacher LocalHFBackend), including the
places transformers itself would fall back to torch.load, and a phase job given a planted pickle as input.
(tests/storage/test_formats.py and test_store_properties.py cover formats.load_tensors and the store.)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from agentforge.v1 import common_pb2
from services.bitnet.core.packed import MANIFEST, PACKED, load_any, load_packed, save_packed
from services.quietstar.core.artifact import HEAD_FILE, load_quietstar, save_quietstar
from services.quietstar.core.rl import MixingHead
from shared.config import load_profile
from shared.config.load import config_hash
from shared.data.special_tokens import add_special_tokens
from shared.data.tokenizer import train_bpe_tokenizer
from shared.errors import NotFoundError, UnsafeFormatError
from shared.model import load_model, save_model
from shared.runtime import JobRegistry, JobRequest, JobState, get_phase
from shared.storage import ArtifactRef, FileEntry, LocalStore, Manifest, sha256_bytes
from shared.storage.formats import tensors_to_bytes
from shared.storage.keys import checkpoint_prefix
from tests.bitnet.test_quant import compressed
from tests.fakes import CountingRunner
from tests.model.helpers import tiny_model
from tests.security.helpers import run_job
from tests.storage.unsafe import armed_pickle, armed_torch_save

PAYLOADS = {"pickle": armed_pickle, "torch.save": armed_torch_save}


def plant(store, key: str, files: dict[str, bytes], *, kind: str = "model", config=None) -> ArtifactRef:
    """An artifact written by someone else: every object put directly, with a manifest whose hashes match,
    so integrity checks pass and only the format check can stop a pickle."""
    entries = {}
    for rel, data in files.items():
        store.put_bytes(f"{key}/{rel}", data)
        entries[rel] = FileEntry(sha256=sha256_bytes(data), size=len(data))
    manifest = Manifest.create(kind=kind, name=key.rsplit("/", 1)[-1], files=entries, config=config).to_json()
    store.put_bytes(f"{key}/manifest.json", manifest)
    return ArtifactRef(uri=store.uri_for(key), sha256=sha256_bytes(manifest),
                       size=sum(len(d) for d in files.values()) + len(manifest), name="model")


# -- checkpoints: the runtime's resume ----------------------------------------------------------------------

SPEC = load_profile("ci").phases.datasets


@pytest.mark.parametrize("file,payload", [("state.safetensors", "pickle"), ("state.safetensors", "torch.save"),
                                          ("state.json", "pickle")])
def test_a_pickled_checkpoint_is_refused_on_resume(file, payload, tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    store = LocalStore(tmp_path / "store")
    good = {"state.safetensors": tensors_to_bytes({"state": torch.ones(4, dtype=torch.float64)}, None),
            "state.json": json.dumps({"step": 3, "note": "fake"}).encode()}
    # a checkpoint made for exactly this job (same phase and spec hash), so only its format can stop it
    plant(store, f"{checkpoint_prefix('resume-me')}step-0000000003", {**good, file: PAYLOADS[payload](marker)},
          kind="checkpoint", config={"spec_hash": config_hash(SPEC.model_dump(mode="json")), "phase": "datasets"})
    definition = dataclasses.replace(get_phase("datasets"), runner_factory=lambda: CountingRunner(steps=6))
    registry = JobRegistry(definition, store)
    job = registry.submit(JobRequest(request_id="resume-me", phase="datasets"), SPEC)
    assert job.done.wait(30)
    registry.shutdown()
    assert job.state is JobState.FAILED and not job.error_id  # refused on purpose, not an accident
    assert f"checkpoints/resume-me/step-0000000003/{file}" in job.error
    assert ("never unpickled" if file.endswith(".safetensors") else "not valid JSON") in job.error
    assert not marker.exists()
    assert store.list("jobs/") == []  # the job produced nothing


# -- model loaders ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phase3_folder(tmp_path_factory) -> Path:
    """A real Phase-3 model folder (tiny): model, tokenizer with the 12 tokens, mixing head, settings."""
    tok = train_bpe_tokenizer([f"the sum of {a} and {b} is {a + b}." for a in range(12) for b in range(12)], 300)
    add_special_tokens(tok)
    model = tiny_model(vocab_size=len(tok)).float()
    return save_quietstar(model, MixingHead(model.config.hidden_dim), tok,
                          {"thought_length": 2, "num_thoughts": 2, "lookahead_tokens": 2},
                          tmp_path_factory.mktemp("phase3") / "model")


@pytest.fixture(scope="module")
def packed_folder(tmp_path_factory, phase3_folder) -> Path:
    """A real packed Phase-4 folder that carries the Phase-3 tokenizer, mixing head and settings."""
    model, emb = compressed()
    return save_packed(model, tmp_path_factory.mktemp("packed") / "model", embedding=emb, pack_format="2bit",
                       carry_from=phase3_folder)


def _packed_with_pickled_weights(folder: Path, payload: bytes) -> None:
    (folder / PACKED).write_bytes(payload)
    manifest = json.loads((folder / MANIFEST).read_text())  # its recorded hash updated, so only format stops it
    (folder / MANIFEST).write_text(json.dumps({**manifest, "sha256": sha256_bytes(payload)}))


LOADERS = {
    "load_model/model.safetensors": ("phase3", "model.safetensors", load_model),
    "load_quietstar/model.safetensors": ("phase3", "model.safetensors", load_quietstar),
    "load_quietstar/mixing_head.safetensors": ("phase3", HEAD_FILE, load_quietstar),
    "load_any/phase3 model.safetensors": ("phase3", "model.safetensors", load_any),
    "load_packed/packed.safetensors": ("packed", PACKED, load_packed),
    "load_any/packed.safetensors": ("packed", PACKED, load_any),
    "load_any/packed mixing_head.safetensors": ("packed", HEAD_FILE, load_any),
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("case", list(LOADERS))
def test_model_loaders_refuse_a_pickle_in_place_of_a_weights_file(case, payload, phase3_folder, packed_folder,
                                                                 tmp_path, no_unpickling):
    source, file, loader = LOADERS[case]
    folder = shutil.copytree(phase3_folder if source == "phase3" else packed_folder, tmp_path / "m")
    marker = tmp_path / "pwned"
    data = PAYLOADS[payload](marker)
    if file == PACKED:
        _packed_with_pickled_weights(folder, data)
    else:
        (folder / file).write_bytes(data)
    with pytest.raises(UnsafeFormatError) as info:
        loader(folder)
    assert str(folder / file) in str(info.value) and "never unpickled" in str(info.value)
    assert not marker.exists()


def test_the_loaders_really_load_the_untouched_folders(phase3_folder, packed_folder, no_unpickling):
    # control for the test above: the same loaders accept the same folders before a pickle is placed
    assert load_quietstar(phase3_folder).head is not None
    assert load_any(packed_folder).head is not None


def _model_folder(tmp_path: Path, model) -> Path:
    return save_model(model, tmp_path / "m")


def _only_a_bin(folder: Path, payload: bytes) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(payload)


def _index_naming(shard: str):
    def place(folder: Path, payload: bytes) -> None:
        (folder / "model.safetensors").rename(folder / "real.safetensors")
        (folder / shard).write_bytes(payload)
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {"embed.weight": "real.safetensors", "lm_head.weight": shard}}))
    return place


def _config_naming_its_weights(folder: Path, payload: bytes) -> None:
    (folder / "adapter_model.bin").write_bytes(payload)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))


# Where transformers' from_pretrained(use_safetensors=True) would still have called torch.load before the
# loaders checked (found while writing these tests): a shard a safetensors index names, and a weights file
# config.json names. A folder with only pytorch_model.bin must be refused too.
FALLBACKS = {
    "only pytorch_model.bin": (_only_a_bin, NotFoundError),
    "index naming a .bin shard": (_index_naming("evil.bin"), UnsafeFormatError),
    "index naming a shard outside the folder": (_index_naming("../outside.safetensors"), UnsafeFormatError),
    "config.json naming adapter_model.bin": (_config_naming_its_weights, UnsafeFormatError),
}


def _tiny_gpt2(tmp_path: Path) -> Path:
    from tests.reasoning_data.test_local_backend import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path / "m")


@pytest.mark.parametrize("loader", ["load_model", "LocalHFBackend"])
@pytest.mark.parametrize("case", list(FALLBACKS))
def test_no_file_transformers_would_torch_load_is_ever_read(case, loader, tmp_path, no_unpickling):
    from services.reasoning_data.core.local_backend import LocalHFBackend

    place, error = FALLBACKS[case]
    folder = _model_folder(tmp_path, tiny_model().float()) if loader == "load_model" else _tiny_gpt2(tmp_path)
    marker = tmp_path / "pwned"
    place(folder, armed_torch_save(marker))
    with pytest.raises(error) as info:
        (load_model if loader == "load_model" else LocalHFBackend)(folder)
    assert str(folder) in str(info.value) and "never loaded" in str(info.value)
    assert not marker.exists()


def test_a_pickle_beside_the_safetensors_weights_is_ignored(tmp_path, no_unpickling):
    model = tiny_model().float()
    folder = _model_folder(tmp_path, model)
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(armed_torch_save(marker))
    again = load_model(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not marker.exists()


# -- a phase job --------------------------------------------------------------------------------------------

def test_a_job_given_a_planted_pickle_fails_and_never_unpickles_it(bitnet_on_s3, phase3_folder, tmp_path,
                                                                   no_unpickling):
    definition, channel, store, bucket = bitnet_on_s3
    marker = tmp_path / "pwned"
    files = {p.relative_to(phase3_folder).as_posix(): p.read_bytes()
             for p in sorted(phase3_folder.rglob("*")) if p.is_file()}
    files["model.safetensors"] = armed_pickle(marker)  # a Phase-3 model artifact whose weights are a pickle
    ref = plant(store, "fixtures/planted", files)
    before = store.list()
    status, events = run_job(definition, channel, "planted-pickle", [ref])
    assert status.state == common_pb2.JOB_STATE_FAILED and not status.error_id
    assert "model.safetensors" in status.error and "never unpickled" in status.error
    assert not marker.exists()
    assert list(status.artifacts) == [] and store.list() == before
