"""A killed BitNet job resumes from its last stage checkpoint and ends exactly like the uninterrupted job (the
`done` fixture: same metrics, same published bytes); a checkpoint of another spec, of other inputs, or corrupt
is refused, never loaded. A worker's death is simulated by a RuntimeError raised from the job's stage
function at a chosen point; the job is resubmitted with the same request_id to a fresh registry."""

import pytest

import services.bitnet.core.job as job_mod
from services.bitnet.core import checkpoint
from shared.runtime import JobState
from shared.storage.keys import checkpoint_prefix
from tests.bitnet.jobs import NUM_LAYERS, SPEC, run_bitnet

BLOCKS = NUM_LAYERS          # one block per layer


def dying_after(monkeypatch, module, name: str, survive: int) -> dict:
    """Replace module.name with a wrapper that lets `survive` calls through and raises on the next one."""
    real, calls = getattr(module, name), {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > survive:
            raise RuntimeError(f"simulated worker death in {name} call {calls['n']}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)
    return calls


def counting(monkeypatch, module, name: str) -> dict:
    return dying_after(monkeypatch, module, name, survive=10 ** 9)


def checkpoint_steps(store, request_id: str) -> list[int]:
    return sorted(int(k.rsplit("-", 1)[-1]) for k in store.list_artifacts(checkpoint_prefix(request_id)))


def published_files(store, job) -> dict[str, str]:
    (ref,) = job.artifacts
    return {rel: entry.sha256 for rel, entry in store.read_manifest(ref).files.items()}


def assert_ends_like(resumed, done, store):
    assert resumed.state is JobState.SUCCEEDED, resumed.error
    assert resumed.metrics == done.metrics                  # every metric, progress series included: bit-exact
    assert published_files(store, resumed) == published_files(store, done)


def test_a_job_killed_in_a_block_resumes_after_the_last_block_and_ends_like_an_uninterrupted_one(
        upstream, done, monkeypatch):
    store, inputs, *_ = upstream
    assert done.state is JobState.SUCCEEDED, done.error
    dying_after(monkeypatch, job_mod, "quantize_layer", survive=1)         # dies in block 1's warm-up
    first = run_bitnet(store, inputs, "b-killed-in-block")
    assert first.state is JobState.FAILED and "internal error" in first.error
    assert checkpoint_steps(store, "b-killed-in-block") == [checkpoint.calibrated_step(0),
                                                            checkpoint.block_step(0, 0)]
    monkeypatch.undo()                                                      # the worker that resumes lives
    calls = counting(monkeypatch, job_mod, "quantize_layer")
    resumed = run_bitnet(store, inputs, "b-killed-in-block")
    assert resumed.resumed_from_step == checkpoint.block_step(0, 0) > 0
    assert calls["n"] == BLOCKS - 1                                         # block 0 was not trained again
    restored = [e.stage for e in resumed.events if e.message.startswith("restored from checkpoint")]
    assert restored == ["calibrated", "block 0 quantized"]                  # reported again, not recomputed
    assert_ends_like(resumed, done, store)


def test_a_job_killed_in_recovery_resumes_after_the_last_epoch(upstream, monkeypatch):
    """Recovery runs whatever the fixture's drop (RECOVERY_ABOVE below any drop); a job killed in its last epoch
    resumes there and ends like the uninterrupted job that recovered too."""
    store, inputs, *_ = upstream
    monkeypatch.setattr(job_mod, "RECOVERY_ABOVE", -1.0)
    whole = run_bitnet(store, inputs, "b-recovering-whole")
    assert whole.state is JobState.SUCCEEDED and whole.metrics["bitnet/recovery_ran"] == 1.0, whole.error
    epochs = SPEC.recovery_epochs
    assert epochs >= 2
    dying_after(monkeypatch, job_mod, "train_steps", survive=BLOCKS + epochs - 1)   # dies in the last epoch
    first = run_bitnet(store, inputs, "b-killed-in-recovery")
    assert first.state is JobState.FAILED
    last = checkpoint.recovery_step(0, BLOCKS, epochs - 1)
    assert checkpoint_steps(store, "b-killed-in-recovery")[-1] == last
    monkeypatch.undo()
    monkeypatch.setattr(job_mod, "RECOVERY_ABOVE", -1.0)
    blocks = counting(monkeypatch, job_mod, "quantize_layer")
    steps = counting(monkeypatch, job_mod, "train_steps")
    resumed = run_bitnet(store, inputs, "b-killed-in-recovery")
    assert resumed.resumed_from_step == last
    assert blocks["n"] == 0 and steps["n"] == 1                             # only the last epoch ran again
    assert [s for s in resumed.stages if s.startswith("recovery epoch")] == [f"recovery epoch {epochs}"]
    assert_ends_like(resumed, whole, store)


def test_a_job_killed_in_the_conservative_restart_resumes_in_it(upstream, monkeypatch):
    """Checkpoints of the conservative attempt come after the first attempt's: a job killed there resumes there
    (the first attempt is not run again) and ends like an uninterrupted job that restarted too."""
    store, inputs, *_ = upstream
    spec = SPEC.model_copy(update={"lambda_warmup_steps": 4, "recovery_epochs": 0})    # a short ci job
    monkeypatch.setattr(job_mod, "CONSERVATIVE_ABOVE", -1.0)               # every drop restarts conservatively
    whole = run_bitnet(store, inputs, "b-conservative-whole", spec=spec)
    assert whole.state is JobState.SUCCEEDED and whole.metrics["bitnet/conservative"] == 1.0, whole.error
    dying_after(monkeypatch, job_mod, "quantize_layer", survive=BLOCKS + 1)    # dies in the restart's block 1
    assert run_bitnet(store, inputs, "b-conservative-killed", spec=spec).state is JobState.FAILED
    assert checkpoint_steps(store, "b-conservative-killed") == [checkpoint.calibrated_step(1),
                                                                checkpoint.block_step(1, 0)]
    monkeypatch.undo()
    monkeypatch.setattr(job_mod, "CONSERVATIVE_ABOVE", -1.0)
    calls = counting(monkeypatch, job_mod, "quantize_layer")
    resumed = run_bitnet(store, inputs, "b-conservative-killed", spec=spec)
    assert resumed.resumed_from_step == checkpoint.block_step(1, 0) and calls["n"] == BLOCKS - 1
    # the uninterrupted job still carries the first attempt's calibration of the memory projections, which the
    # conservative config keeps in full precision; the resumed job never saw that attempt
    first_attempt_only = {k for k in whole.metrics if k.startswith("bitnet/weight_error/") and ".memory.to_" in k}
    assert first_attempt_only and set(whole.metrics) - set(resumed.metrics) == first_attempt_only
    assert resumed.metrics == {k: v for k, v in whole.metrics.items() if k not in first_attempt_only}
    assert published_files(store, resumed) == published_files(store, whole)


def test_a_checkpoint_of_another_spec_of_other_inputs_or_corrupt_is_refused(upstream, monkeypatch):
    store, inputs, bad_inputs, _ = upstream
    dying_after(monkeypatch, job_mod, "quantize_layer", survive=0)         # dies after calibration's checkpoint
    assert run_bitnet(store, inputs, "b-refused").state is JobState.FAILED
    (key,) = store.list_artifacts(checkpoint_prefix("b-refused"))
    monkeypatch.undo()
    calls = counting(monkeypatch, job_mod, "calibrate_quantization")

    other_spec = run_bitnet(store, inputs, "b-refused", spec=SPEC.model_copy(update={"lambda_warmup_steps": 4}))
    assert other_spec.state is JobState.FAILED and "spec hash" in other_spec.error, other_spec.error
    other_inputs = run_bitnet(store, bad_inputs, "b-refused")
    assert other_inputs.state is JobState.FAILED and "other inputs (model differ)" in other_inputs.error

    weights = store.root / key / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF                                                        # the last byte of the weights
    weights.write_bytes(bytes(data))
    corrupt = run_bitnet(store, inputs, "b-refused")
    assert corrupt.state is JobState.FAILED and "corrupt" in corrupt.error, corrupt.error
    assert calls["n"] == 0                                                  # refused before any work
    assert checkpoint_steps(store, "b-refused") == [checkpoint.calibrated_step(0)]   # and nothing overwritten


@pytest.mark.parametrize("field,value", [("attempt", 1), ("converted", ["net.layers.0.attn.q"])])
def test_a_checkpoint_of_another_compression_is_refused(upstream, monkeypatch, field, value):
    """Same spec and inputs, but the state says another attempt or other converted layers: never loaded."""
    store, inputs, *_ = upstream
    real = checkpoint.read

    def tampered(ctx):
        restored = real(ctx)
        return None if restored is None else checkpoint.Restored(
            restored.step, {**restored.state, field: value}, restored.model, restored.optimizer, restored.rng)

    dying_after(monkeypatch, job_mod, "quantize_layer", survive=0)
    request = f"b-other-{field}"
    assert run_bitnet(store, inputs, request).state is JobState.FAILED
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint, "read", tampered)
    job = run_bitnet(store, inputs, request)
    assert job.state is JobState.FAILED and "another compression" in job.error, job.error
