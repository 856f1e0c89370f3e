"""formats.py: safetensors only, never unpickled; optimizer state round-trips bit for bit."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import pytest
import torch

from shared.errors import InvalidSpecError, UnsafeFormatError
from shared.storage import formats
from tests.storage.unsafe import armed_pickle, armed_torch_save


def test_the_payload_is_really_armed(tmp_path: Path) -> None:
    # control: proves the marker test below would notice an unpickle
    pickle.loads(armed_pickle(tmp_path / "control"))
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize("kind", ["pickle", "torch_zip", "garbage", "short", "huge_header", "bad_offsets"])
def test_unsafe_files_are_refused_and_never_unpickled(tmp_path: Path, kind: str, no_unpickling) -> None:
    marker = tmp_path / "pwned"
    data = {
        "pickle": lambda: armed_pickle(marker),
        "torch_zip": lambda: armed_torch_save(marker),
        "garbage": lambda: b"hello world, definitely not tensors",
        "short": lambda: b"\x01\x02",
        "huge_header": lambda: struct.pack("<Q", 10**12) + b"{}",
        "bad_offsets": lambda: _with_header(b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}'),
    }[kind]()
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(UnsafeFormatError) as info:
        formats.load_tensors(path)
    message = str(info.value)
    assert str(path) in message and "never unpickled" in message
    if kind == "pickle":
        assert "pickle" in message
    if kind == "torch_zip":
        assert "torch.save" in message
    with pytest.raises(UnsafeFormatError):
        formats.load_tensors_bytes(data, name="x.safetensors")
    assert not marker.exists()


def _with_header(header: bytes) -> bytes:
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + b"\x00" * 8


def test_tensor_round_trip_keeps_dtype_shape_values_and_metadata(tmp_path: Path) -> None:
    tensors = {
        "w": torch.randn(3, 4),
        "h": torch.randn(5).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(7.0),
        "view": torch.randn(4, 4).t(),  # non-contiguous
    }
    tensors["alias"] = tensors["w"][0]  # shares storage with w: must be stored as its own copy
    path = tmp_path / "t.safetensors"
    formats.save_tensors(path, tensors, {"note": "hi"})
    loaded, meta = formats.load_tensors(path)
    assert meta == {"note": "hi"}
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    buf = io.BytesIO()
    formats.save_tensors(buf, {"a": torch.ones(1)})
    assert torch.equal(formats.load_tensors_bytes(buf.getvalue())[0]["a"], torch.ones(1))
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_save_refuses_bad_metadata(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError):
        formats.save_tensors(tmp_path / "x.safetensors", {"a": torch.ones(1)}, {"n": 1})  # type: ignore[dict-item]


def test_canonical_json_and_hashes(tmp_path: Path) -> None:
    assert formats.dumps_canonical({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'
    with pytest.raises(InvalidSpecError, match="NaN"):
        formats.dumps_canonical({"x": float("nan")})
    with pytest.raises(InvalidSpecError):
        formats.loads_strict('{"x": NaN}')
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1_000_000)
    assert formats.sha256_file(path) == formats.sha256_bytes(b"abc" * 1_000_000)


def _make(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, i: int) -> None:
    g = torch.Generator().manual_seed(1000 + i)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_state_round_trip_resumes_bit_for_bit(name: str, tmp_path: Path, no_unpickling) -> None:
    make_opt = OPTIMIZERS[name]
    # uninterrupted run: 4 steps
    ref_model = _make(0)
    ref_opt = make_opt(ref_model.parameters())
    for i in range(4):
        _step(ref_model, ref_opt, i)

    # interrupted run: 3 steps, save weights + optimizer through safetensors/JSON, resume in fresh objects
    model = _make(0)
    opt = make_opt(model.parameters())
    for i in range(3):
        _step(model, opt, i)
    formats.save_tensors(tmp_path / "model.safetensors", model.state_dict())
    (tmp_path / "optim.safetensors").write_bytes(formats.optimizer_state_bytes(opt.state_dict()))

    resumed = _make(123)  # different init: everything must come from the files
    weights, _ = formats.load_tensors(tmp_path / "model.safetensors")
    resumed.load_state_dict(weights)
    resumed_opt = make_opt(resumed.parameters())
    state = formats.optimizer_state_from_bytes((tmp_path / "optim.safetensors").read_bytes())
    resumed_opt.load_state_dict(state)
    _step(resumed, resumed_opt, 3)

    for a, b in zip(ref_model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)

    # control: resuming without the optimizer state does NOT match, so the check above has teeth
    blank = _make(0)
    blank.load_state_dict(weights)
    _step(blank, make_opt(blank.parameters()), 3)
    assert not all(torch.equal(a, b) for a, b in zip(ref_model.parameters(), blank.parameters(), strict=True))
    assert state["param_groups"][0] == opt.state_dict()["param_groups"][0]  # tuples, ints, None kept


def test_optimizer_state_types_survive_json() -> None:
    sd = {
        "state": {0: {"step": torch.tensor(3.0), "buf": torch.ones(2)}, 7: {"k": 2, "f": float("inf")}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 7], "foreach": None, "$odd": 1}],
    }
    tensors, meta = formats.optimizer_state_to_tensors(sd)
    meta = formats.loads_strict(formats.dumps_canonical(meta))  # through real JSON text
    back = formats.optimizer_state_from_tensors(tensors, meta)
    assert set(back["state"]) == {0, 7}
    assert back["state"][7] == {"k": 2, "f": float("inf")}
    assert back["param_groups"] == sd["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    with pytest.raises(InvalidSpecError, match="does not reference"):
        formats.optimizer_state_from_tensors({**tensors, "extra": torch.ones(1)}, meta)
    with pytest.raises(InvalidSpecError, match="format"):
        formats.optimizer_state_from_tensors(tensors, {"format": "other"})


def test_load_json_reads_strictly_and_names_the_file(tmp_path):
    from shared.errors import NotFoundError
    from shared.storage.formats import load_json

    good = tmp_path / "data.json"
    good.write_text('{"examples": [1, 2]}')
    assert load_json(good) == {"examples": [1, 2]}
    bad = tmp_path / "nan.json"
    bad.write_text('{"x": NaN}')
    with pytest.raises(InvalidSpecError, match="nan.json"):
        load_json(bad)
    with pytest.raises(NotFoundError, match="missing.json"):
        load_json(tmp_path / "missing.json")
