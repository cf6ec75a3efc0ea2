"""The "auto" precision switches: bf16 autocast and channels-last where the CPU computes bf16 natively."""

from __future__ import annotations

import pytest
import torch
from vqseg_bundle.engines.precision import cpu_has_native_bf16, resolve_switch


@pytest.mark.parametrize(
    "flags, expected",
    [("fpu sse avx2 avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True), ("fpu sse avx2 avx512f", False)],
)
def test_native_bf16_read_from_cpuinfo_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_has_native_bf16(str(info)) is expected


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_switch_values():
    assert resolve_switch(True, "cuda") is True and resolve_switch(False, "cpu") is False
    assert resolve_switch("auto", "cuda") is False  # GPUs: fp32 unless asked
    assert resolve_switch("auto", torch.device("cpu")) is cpu_has_native_bf16()
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        resolve_switch("fast", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_forced_bf16_on_an_emulating_cpu_is_warned(monkeypatch, caplog, native):
    from vqseg_bundle.engines import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="vqseg_bundle.engines.precision"):
        message = precision.emulated_bf16_warning(True, "bfloat16", "cpu")
    if native:
        assert message is None and not caplog.records
    else:
        assert "emulated" in message and "--amp auto" in message and message in caplog.text
    # never for fp32, float16 or a GPU
    assert precision.emulated_bf16_warning(False, "bfloat16", "cpu") is None
    assert precision.emulated_bf16_warning(True, "float16", "cpu") is None
    assert precision.emulated_bf16_warning(True, "bfloat16", "cuda") is None
