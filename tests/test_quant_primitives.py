from __future__ import annotations

import math

import pytest
import torch

from edgevla.errors import EdgevlaError
from edgevla.quant.primitives import (
    Int4GroupedWeight,
    Int8Weight,
    cast_roundtrip,
    dequantize,
    fake_quantize_fp8,
    fp8_scale,
    int8_table,
    pack_int4,
    pow2_int8_scale,
    quantize,
    sqnr_db,
    unpack_int4,
)


def test_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.25, 0.75, -0.25, -0.75, 1.25, 100.0, -100.0, 0.3])
    # scale 0.5: x/scale = 0.5, 1.5, -0.5, -1.5, 2.5, 200, -200, 0.6
    q = quantize(x, 0.5)
    assert q.dtype == torch.int8
    assert q.tolist() == [0, 2, 0, -2, 2, 127, -128, 1]
    assert dequantize(q, 0.5).tolist() == [0.0, 1.0, 0.0, -1.0, 1.0, 63.5, -64.0, 0.5]


def test_int8_weight_per_output_channel_by_hand():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.005, 0.02, -0.0127], [0.0, 0.0, 0.0]])
    q = Int8Weight.from_hp(w)
    assert torch.allclose(q.scale, torch.tensor([2.0 / 127, 0.02 / 127, 1.0]))
    assert q.qdata[0].tolist() == [64, -127, 32]  # 63.5 -> 64 (half to even), 31.75 -> 32
    assert q.qdata[1].tolist() == [32, 127, -81]  # 31.75 -> 32; -0.0127 / 0.02 * 127 = -80.645 -> -81
    assert q.qdata[2].tolist() == [0, 0, 0]
    assert torch.equal(q.zero_point, torch.zeros(3, dtype=torch.int8))
    assert torch.allclose(q.dequantize(), q.qdata.float() * q.scale[:, None])


def test_int4_pack_nibble_order_and_round_trip():
    q = torch.tensor([[1, -1, 7, -8]], dtype=torch.int8)
    packed = pack_int4(q)
    # element 0 low nibble, element 1 high nibble: 0x1 | 0xF << 4 = 0xF1; 0x7 | 0x8 << 4 = 0x87
    assert packed.tolist() == [[0xF1, 0x87]]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (16, 64), generator=g, dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    with pytest.raises(EdgevlaError):
        pack_int4(torch.tensor([[1, 2, 3]], dtype=torch.int8))


def test_int4_grouped_by_hand():
    w = torch.cat([torch.full((1, 32), 0.7), torch.full((1, 32), -1.4)], dim=1)
    w[0, 0] = 0.1  # 0.1 / (0.7/7) = 1.0
    q = Int4GroupedWeight.from_hp(w, group_size=32)
    assert torch.allclose(q.scale, torch.tensor([[0.1, 0.2]]))
    codes = q.codes()
    assert codes[0, 0] == 1 and codes[0, 1] == 7 and codes[0, 40] == -7
    assert q.qdata.shape == (1, 32) and q.qdata.dtype == torch.uint8
    with pytest.raises(EdgevlaError):
        Int4GroupedWeight.from_hp(torch.randn(4, 48), group_size=32)
    with pytest.raises(EdgevlaError):
        Int4GroupedWeight.from_hp(torch.randn(4, 64), group_size=16)


# SQNR floors on N(0, 1) weights (256 x 512). Theory: uniform b-bit quantization of a Gaussian
# clipped at its per-row max (~3.3 sigma) gives ~6.02 b - 10.3 dB; int8 ~ 38 dB, int4 g32 ~ 19.5 dB.
@pytest.mark.parametrize("fmt, floor", [("int8", 35.0), ("int4-g32", 18.0), ("int4-g64", 17.0),
                                        ("int4-g128", 16.0), ("fp16", 60.0), ("bf16", 40.0)])
def test_sqnr_floors_on_gaussian_weights(fmt, floor):
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(1))
    if fmt == "int8":
        y = Int8Weight.from_hp(w).dequantize()
    elif fmt.startswith("int4"):
        y = Int4GroupedWeight.from_hp(w, int(fmt.split("-g")[1])).dequantize()
    else:
        y = cast_roundtrip(w, fmt)
    assert sqnr_db(w, y) >= floor


def test_int4_group_size_orders_sqnr():
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(2))
    s = [sqnr_db(w, Int4GroupedWeight.from_hp(w, g).dequantize()) for g in (32, 64, 128)]
    assert s[0] > s[1] > s[2]


def test_sqnr_definition():
    x = torch.tensor([3.0, 4.0])
    assert sqnr_db(x, torch.tensor([3.0, 4.5])) == pytest.approx(20 * math.log10(5 / 0.5))
    assert sqnr_db(x, x) == math.inf


def test_fp8_e4m3_fake_quant():
    # 448 is E4M3's largest finite value; out-of-range saturates instead of turning NaN.
    x = torch.tensor([1.0, 1.0625, 1.1875, 500.0, -1000.0])
    y = fake_quantize_fp8(x, 1.0)
    # E4M3 has 3 mantissa bits: spacing 0.125 in [1, 2); 1.0625 is a tie -> even (1.0); 1.1875 -> 1.25
    assert y.tolist() == [1.0, 1.0, 1.25, 448.0, -448.0]
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    assert sqnr_db(w, fake_quantize_fp8(w, fp8_scale(w.abs().max()))) > 25.0


def test_casts_and_bad_input():
    x = torch.tensor([1.0 + 2 ** -12])
    assert cast_roundtrip(x, "fp16").item() == 1.0  # fp16 has 10 mantissa bits
    assert cast_roundtrip(torch.tensor([1.0 + 2 ** -8]), "bf16").item() == 1.0  # 7 mantissa bits: a tie, to even
    with pytest.raises(EdgevlaError):
        cast_roundtrip(x, "fp4")
    with pytest.raises(EdgevlaError):
        Int8Weight.from_hp(torch.tensor([[float("nan"), 1.0]]))


def test_int4_fp16_scales_by_hand():
    # One group of 32: amax 0.7 -> scale 0.1 (fp32), which fp16 holds as 0.0999755859375.
    w = torch.zeros(1, 32)
    w[0, 0], w[0, 1], w[0, 2] = 0.7, -0.35, 0.1
    q = Int4GroupedWeight.from_hp(w, 32, scale_dtype="fp16")
    assert q.scale.item() == torch.tensor(0.1).half().item() == 0.0999755859375
    assert q.codes()[0, :3].tolist() == [7, -4, 1]  # 0.7 / 0.09998 = 7.0017 -> 7; -0.35 / 0.09998 = -3.5009 -> -4
    deq = q.dequantize()
    assert deq[0, 0].item() == (7 * torch.tensor(0.0999755859375)).half().float().item()  # rounded as a DQ in fp16
    assert torch.equal(deq, deq.half().float()) and q.nbytes == 16 + 2
    with pytest.raises(EdgevlaError, match="scale type"):
        Int4GroupedWeight.from_hp(w, 32, scale_dtype="fp8")
    # A zero group keeps a usable scale, never fp16's zero.
    assert Int4GroupedWeight.from_hp(torch.zeros(2, 32), 32, scale_dtype="fp16").scale.min() > 0


def test_tables_sit_on_a_power_of_two_int8_grid():
    assert pow2_int8_scale(1.0) == 2 ** -6  # 1/127 = 2^-6.99 -> 2^-6: the largest code is 64
    assert pow2_int8_scale(127.0) == 1.0 and pow2_int8_scale(127.5) == 2.0 and pow2_int8_scale(0.0) == 1.0
    t = torch.randn(16, 24, generator=torch.Generator().manual_seed(4))
    codes, scale = int8_table(t)
    assert math.log2(scale).is_integer() and codes.abs().max() <= 127 and codes.abs().max() >= 64
    rounded = dequantize(codes, scale)
    assert (rounded - t).abs().max() <= scale / 2
    again, scale_again = int8_table(rounded)  # the grid is recovered from the rounded table alone
    assert scale_again == scale and torch.equal(again, codes)
