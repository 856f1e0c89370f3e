"""services/bitnet/core/pack.py: the packed ternary storage formats (issue #10)."""

from __future__ import annotations

import math

import pytest
import torch

from services.bitnet.core.pack import CODE, pack_ternary, packed_nbytes, unpack_ternary
from shared.errors import InvalidSpecError

FORMATS = ("2bit", "base3")
PER = {"2bit": 4, "base3": 5}


def random_codes(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_and_exact_sizes(fmt):
    shapes = [(n,) for n in range(0, 14)] + [(3, 5), (7, 3, 2), (1, 1, 1), (129, 33), (512, 2048), (100_003,)]
    for i, shape in enumerate(shapes):
        codes = random_codes(shape, seed=i)
        packed = pack_ternary(codes, fmt)
        n = math.prod(shape)
        assert packed.dtype == torch.uint8 and packed.dim() == 1
        assert packed.numel() == packed_nbytes(n, fmt) == -(-n // PER[fmt]), (fmt, shape)
        assert torch.equal(unpack_ternary(packed, shape, fmt), codes), (fmt, shape)


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_equal_values_and_default_fmt(fmt):
    for v in (-1, 0, 1):
        codes = torch.full((11,), v, dtype=torch.int8)
        assert torch.equal(unpack_ternary(pack_ternary(codes, fmt), (11,), fmt), codes)
    codes = random_codes((9,))
    assert torch.equal(pack_ternary(codes), pack_ternary(codes, "2bit"))


def test_2bit_layout_by_hand():
    assert CODE == {0: 0b00, 1: 0b01, -1: 0b10}
    codes = torch.tensor([0, 1, -1, 1, -1, -1], dtype=torch.int8)
    packed = pack_ternary(codes, "2bit")
    # byte 0: elements 0..3 at bits 0,2,4,6; byte 1: elements 4, 5 then zero padding
    assert packed.tolist() == [0b01_10_01_00, 0b00_00_10_10]
    assert torch.equal(unpack_ternary(torch.tensor([0b01_10_01_00, 0b1010], dtype=torch.uint8), (6,), "2bit"), codes)


def test_base3_layout_by_hand():
    codes = torch.tensor([0, 1, -1, 1, -1, 1, 1], dtype=torch.int8)
    packed = pack_ternary(codes, "base3")
    # digits w+1: [1,2,0,2,0] → 1 + 2·3 + 0·9 + 2·27 + 0·81 = 61; [2,2] then padding digit 0 → 2 + 2·3 = 8
    assert packed.tolist() == [61, 8]
    assert pack_ternary(torch.ones(5, dtype=torch.int8), "base3").tolist() == [242]


@pytest.mark.parametrize("fmt", FORMATS)
def test_invalid_codes_are_rejected(fmt):
    with pytest.raises(InvalidSpecError) as e:
        pack_ternary(torch.tensor([0, 1, 2, -1], dtype=torch.int8), fmt)
    assert e.value.field == "codes" and "value 2 at flat index 2" in str(e.value)
    with pytest.raises(InvalidSpecError, match="int8") as e:
        pack_ternary(torch.tensor([0, 1, -1]), fmt)                        # int64
    assert e.value.field == "codes"
    with pytest.raises(InvalidSpecError) as e:
        pack_ternary(torch.tensor([-128], dtype=torch.int8), fmt)
    assert e.value.field == "codes"


def test_unknown_format():
    with pytest.raises(InvalidSpecError) as e:
        pack_ternary(torch.zeros(3, dtype=torch.int8), "int8")
    assert e.value.field == "fmt"
    with pytest.raises(InvalidSpecError):
        unpack_ternary(torch.zeros(1, dtype=torch.uint8), (3,), "1bit")
    with pytest.raises(InvalidSpecError):
        packed_nbytes(3, "base4")


def test_corrupt_2bit_data_raises():
    with pytest.raises(InvalidSpecError) as e:
        unpack_ternary(torch.tensor([0b00_11_00_00], dtype=torch.uint8), (4,), "2bit")
    assert e.value.field == "packed" and "0b11" in str(e.value) and "element 2" in str(e.value)
    with pytest.raises(InvalidSpecError, match="padding") as e:                 # element 3 does not exist
        unpack_ternary(torch.tensor([0b01_00_00_00], dtype=torch.uint8), (3,), "2bit")


def test_corrupt_base3_data_raises():
    with pytest.raises(InvalidSpecError) as e:
        unpack_ternary(torch.tensor([5, 243], dtype=torch.uint8), (10,), "base3")
    assert e.value.field == "packed" and "243" in str(e.value) and "byte 1" in str(e.value)
    with pytest.raises(InvalidSpecError, match="padding"):
        unpack_ternary(torch.tensor([9], dtype=torch.uint8), (2,), "base3")   # 9 = digit 1 at position 2, past n = 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_byte_count_and_dtype_are_checked(fmt):
    packed = pack_ternary(random_codes((10,)), fmt)
    with pytest.raises(InvalidSpecError) as e:
        unpack_ternary(packed, (11 * PER[fmt],), fmt)
    assert e.value.field == "packed"
    with pytest.raises(InvalidSpecError) as e:
        unpack_ternary(packed.to(torch.int16), (10,), fmt)
    assert e.value.field == "packed"
    with pytest.raises(InvalidSpecError) as e:
        unpack_ternary(packed.view(1, -1), (10,), fmt)
    assert e.value.field == "packed"
