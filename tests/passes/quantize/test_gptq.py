"""GPTQ (passes/quantize/gptq.py): round-to-nearest when nothing is correlated, lower output error
when the inputs are, side tensors of the same layout as round-to-nearest in every format."""

from __future__ import annotations

import numpy as np
import pytest

from edgefold.passes.quantize import quant_formats as qf
from edgefold.passes.quantize.gptq import _code_range, gptq_quantize, output_error

INT_FORMATS = ["int8", "int4-g32-sym", "int4-g128-asym", "int4-ch-asym", "int4-g32-min", "int4-g32-min-s8",
               "int4-g32-sym-s8", "int4-g64-asym-s8"]
LAYOUTS = {"matmul": ((256, 48), qf.Layout(1, 0)), "transposed": ((40, 192), qf.Layout(0, 1)),
           "ragged": ((200, 24), qf.Layout(1, 0))}


def _weight(rng, shape):
    weight = (rng.standard_normal(shape) * rng.uniform(0.01, 0.2, size=shape[-1])).astype(np.float32)
    weight.flat[::97] *= 8  # a few outliers
    return weight


def _correlated_hessian(rng, width, tokens=2048):
    """x x^T of inputs with a few strong shared directions and uneven channel scales (like an LLM's)."""
    mix = rng.standard_normal((width, 8)) * 2
    x = rng.standard_normal((tokens, 8)) @ mix.T + rng.standard_normal((tokens, width)) * 0.3
    x *= rng.uniform(0.2, 3.0, size=width)
    return x.T @ x / tokens


@pytest.mark.parametrize("name", INT_FORMATS)
@pytest.mark.parametrize("case", list(LAYOUTS))
def test_identity_hessian_is_round_to_nearest(name, case):
    rng = np.random.default_rng(1)
    shape, layout = LAYOUTS[case]
    weight = _weight(rng, shape)
    fmt = qf.parse_format(name)
    if not qf.supports(shape, fmt, layout):
        pytest.skip("min scheme needs whole blocks")
    rtn = qf.quantize(weight, fmt, layout)
    got = gptq_quantize(weight, fmt, layout, np.eye(shape[layout.in_axis]))
    np.testing.assert_array_equal(got.codes, rtn.codes)
    np.testing.assert_array_equal(got.scale, rtn.scale)


@pytest.mark.parametrize("name", INT_FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
def test_correlated_inputs_lower_the_output_error(name, act_order):
    """On inputs with shared directions GPTQ's output error is well below round-to-nearest's; side
    tensors keep their shape and type (and their values where the grid is static: act_order,
    8-bit scales, one scale per row); codes stay within their range."""
    rng = np.random.default_rng(2)
    shape, layout = LAYOUTS["matmul"]
    weight = _weight(rng, shape)
    hessian = _correlated_hessian(rng, shape[0])
    fmt = qf.parse_format(name)
    rtn = qf.quantize(weight, fmt, layout)
    got = gptq_quantize(weight, fmt, layout, hessian, act_order=act_order)
    static = act_order or fmt.scale_bits == 8 or fmt.block == 0  # else each group's grid is refitted
    for side in ("scale", "zero_point", "minimum", "scale_codes", "min_codes"):
        if getattr(rtn, side) is not None:
            assert getattr(got, side).shape == getattr(rtn, side).shape
            assert getattr(got, side).dtype == getattr(rtn, side).dtype
            if static:
                np.testing.assert_array_equal(getattr(got, side), getattr(rtn, side))
    assert got.codes.dtype == rtn.codes.dtype
    lo, hi = _code_range(rtn)
    assert lo <= got.codes.min() and got.codes.max() <= hi and (got.codes != rtn.codes).any()
    before = output_error(weight, rtn.dequantize(), layout, hessian)
    after = output_error(weight, got.dequantize(), layout, hessian)
    assert after < 0.8 * before, (name, before, after)


def test_float_formats_and_bad_hessians():
    rng = np.random.default_rng(3)
    shape, layout = LAYOUTS["matmul"]
    weight = _weight(rng, shape)
    hessian = _correlated_hessian(rng, shape[0])
    for name in ("fp16", "fp8"):
        fmt = qf.parse_format(name)
        np.testing.assert_array_equal(gptq_quantize(weight, fmt, layout, hessian).codes,
                                      qf.quantize(weight, fmt, layout).codes)
    with pytest.raises(ValueError, match="Hessian"):
        gptq_quantize(weight, qf.parse_format("int8"), layout, np.eye(3))
    dead = hessian.copy()
    dead[5, :] = dead[:, 5] = 0  # an input never seen
    assert np.isfinite(gptq_quantize(weight, qf.parse_format("int4-g32-asym"), layout, dead).dequantize()).all()
