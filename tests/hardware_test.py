"""The CPU's instruction set and the --mixed_precision warning on CPUs without 16-bit units."""

import logging

import pytest

from wae_tf.perf import hardware

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
XEON = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # no AVX512_BF16
ZEN4 = XEON | {"avx512_bf16"}
SAPPHIRE_RAPIDS = XEON | {"avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"}


def test_cpu_isa_names_the_vector_instruction_set(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert hardware.cpu_isa(AVX2) == "AVX2/FMA (no AVX-512)"
    assert hardware.cpu_isa(XEON) == "AVX-512 (avx512_vnni avx512bw avx512f avx512vl)"
    assert hardware.cpu_isa(frozenset({"sse4_2"})) == "below AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.cpu_isa(XEON).endswith("; oneDNN capped at AVX2")


def test_cpu_flags_reads_this_machine():
    flags = hardware.cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    assert "avx2" in flags  # every CPU the suite runs on (x86-64 with AVX2 at least)


@pytest.mark.parametrize("policy, flags, warned", [
    ("mixed_bfloat16", AVX2, True),
    ("mixed_bfloat16", XEON, True),
    ("mixed_bfloat16", ZEN4, False),
    ("mixed_bfloat16", SAPPHIRE_RAPIDS, False),
    ("mixed_float16", ZEN4, True),  # bf16 units do not compute float16
    ("mixed_float16", SAPPHIRE_RAPIDS, False),
    ("none", AVX2, False),
    ("mixed_bfloat16", None, False),  # flags unknown: no guess
])
def test_slow_mixed_precision_only_where_the_cpu_lacks_the_units(policy, flags, warned):
    message = hardware.slow_mixed_precision(policy, flags, has_gpu=False)
    assert (message is not None) == warned
    if warned:
        units = "AVX512_BF16 or AMX_BF16" if policy == "mixed_bfloat16" else "AVX512_FP16"
        assert units in message and "--mixed_precision=none" in message


def test_no_warning_with_a_gpu():
    assert hardware.slow_mixed_precision("mixed_bfloat16", AVX2, has_gpu=True) is None


def test_warning_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2)
    with caplog.at_level(logging.WARNING):
        hardware.warn_if_slow_mixed_precision("mixed_bfloat16")
        hardware.warn_if_slow_mixed_precision("none")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "emulates bfloat16" in warnings[0]
