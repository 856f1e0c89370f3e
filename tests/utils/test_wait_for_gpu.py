"""wait_for_gpu: fails fast without CUDA, polls a busy device, times out with the numbers."""

import time

import pytest
import torch

from shared.errors import AcceleratorUnavailableError, InvalidSpecError
from shared.utils import wait_for_gpu

INFO = {"name": "Fake GPU", "total_gb": 8.0, "index": 0, "required_gb": 6.0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path; this host has CUDA")
def test_no_cuda_raises_at_once_instead_of_waiting_an_hour():
    start = time.monotonic()
    with pytest.raises(AcceleratorUnavailableError, match="no CUDA device visible"):
        wait_for_gpu(timeout=3600)
    assert time.monotonic() - start < 1.0


def test_probe_without_a_device_raises_at_once():
    start = time.monotonic()
    with pytest.raises(AcceleratorUnavailableError, match="no CUDA device visible"):
        wait_for_gpu(timeout=3600, poll_interval=10, probe=lambda: (False, None))
    assert time.monotonic() - start < 1.0


def test_busy_device_is_polled_until_free():
    polls = []

    def probe():
        polls.append(time.monotonic())
        free = 2.0 if len(polls) < 3 else 7.5
        return free >= 6.0, {**INFO, "free_gb": free}

    info = wait_for_gpu(timeout=5, poll_interval=0.01, probe=probe)
    assert len(polls) == 3
    assert info == {"name": "Fake GPU", "total_gb": 8.0, "free_gb": 7.5, "index": 0}
    assert polls[2] - polls[0] >= 0.015  # it slept between polls rather than spinning


def test_device_that_never_frees_times_out_with_the_numbers():
    calls = []

    def probe():
        calls.append(1)
        return False, {**INFO, "free_gb": 1.25}

    start = time.monotonic()
    with pytest.raises(AcceleratorUnavailableError) as err:
        wait_for_gpu(timeout=0.2, poll_interval=0.02, probe=probe)
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.0
    msg = str(err.value)
    assert "Fake GPU" in msg and "1.2 GB free of 8.0 GB" in msg and "needed 6.0 GB" in msg
    assert "0.2 s" in msg
    assert len(calls) >= 3


@pytest.mark.parametrize(("kwargs", "field"), [({"timeout": -1}, "timeout"), ({"poll_interval": 0}, "poll_interval")])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(InvalidSpecError) as err:
        wait_for_gpu(probe=lambda: (True, {**INFO, "free_gb": 8.0}), **kwargs)
    assert err.value.field == field


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_device_is_reported():
    info = wait_for_gpu(timeout=5, min_free_gb=0.0)
    assert info["index"] == 0 and info["total_gb"] > 0
    assert 0 < info["free_gb"] <= info["total_gb"]
    assert info["name"] == torch.cuda.get_device_name(0)
