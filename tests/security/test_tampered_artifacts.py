"""An artifact whose bytes were replaced in S3 behind the store's back (real SeaweedFS, overwritten with the
plain minio client) is refused on every read with an error naming the file, the hash the manifest recorded
and the hash of what is there now; a phase job given it as an input fails naming it and publishes nothing.
(tests/storage/test_store_properties.py checks the same reads on both backends with a one-bit flip written
through the store, and a replaced manifest.)"""

from __future__ import annotations

import io

import pytest
import torch

from agentforge.v1 import common_pb2
from shared.errors import IntegrityError
from shared.storage import sha256_bytes
from shared.storage.formats import tensors_to_bytes
from tests.security.helpers import run_job

KEY = "fixtures/phase3-model"


def write_phase3_like(store):
    """A small model-shaped artifact, written the normal way."""
    with store.open_artifact(KEY, kind="model", name="model", config={"fixture": True}) as w:
        w.add_tensors("model.safetensors", {"w": torch.ones(8, 8), "b": torch.zeros(8)}, {"arch": "tiny"})
        w.add_json("config.json", {"model_type": "trm_titans_mag"})
        w.add_json("quietstar.json", {"format": 1})
    return w.ref


def overwrite_in_s3(seaweed, bucket: str, key: str, data: bytes) -> None:
    """Replace an object's bytes directly in S3, as someone with bucket access (not the store) would."""
    seaweed.client().put_object(bucket, key, io.BytesIO(data), len(data))


@pytest.fixture
def tampered(bitnet_on_s3, seaweed):
    definition, channel, store, bucket = bitnet_on_s3
    ref = write_phase3_like(store)
    original = store.get_bytes(f"{KEY}/model.safetensors")
    # other weights of the same shapes: a valid safetensors file of the same size, so neither a size check
    # nor the format check could notice — only the hash can
    forged = tensors_to_bytes({"w": torch.full((8, 8), 7.0), "b": torch.zeros(8)}, {"arch": "tiny"})
    assert len(forged) == len(original) and forged != original
    overwrite_in_s3(seaweed, bucket, f"{KEY}/model.safetensors", forged)
    expected = store.read_manifest(ref).files["model.safetensors"].sha256
    return ref, expected, sha256_bytes(forged)


def test_replaced_bytes_are_refused_on_every_read_naming_file_and_both_hashes(bitnet_on_s3, tampered, tmp_path):
    definition, channel, store, bucket = bitnet_on_s3
    ref, expected, actual = tampered
    # the manifest is untouched (read through the ref, it would raise otherwise): only the file changed
    assert store.read_manifest(ref).files["model.safetensors"].sha256 == expected != actual
    for read in (lambda: store.load_tensors(ref, "model.safetensors"),
                 lambda: store.read_file_bytes(ref, "model.safetensors"),
                 lambda: store.fetch(ref, tmp_path / "out"),
                 lambda: store.verify(ref)):
        with pytest.raises(IntegrityError) as info:
            read()
        message = str(info.value)
        assert "model.safetensors" in message and expected in message and actual in message
    assert not (tmp_path / "out" / "model.safetensors").exists()  # no unverified file left under its name
    assert store.load_json(ref, "config.json") == {"model_type": "trm_titans_mag"}  # untouched files still read


def test_a_job_given_a_tampered_input_fails_naming_it_and_publishes_nothing(bitnet_on_s3, tampered):
    definition, channel, store, bucket = bitnet_on_s3
    ref, expected, actual = tampered
    before = store.list()
    status, events = run_job(definition, channel, "tampered-input", [ref])
    assert status.state == common_pb2.JOB_STATE_FAILED and events[-1].state == common_pb2.JOB_STATE_FAILED
    assert f"{ref.uri}/model.safetensors" in status.error and "corrupt" in status.error
    assert expected in status.error and actual in status.error
    assert not status.error_id  # a known, named failure, not an internal error
    assert list(status.artifacts) == []
    assert store.list() == before  # nothing staged under jobs/, nothing published, no checkpoint
