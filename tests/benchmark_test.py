"""Tests of the benchmark: a quick run reports every figure; FLOP counts by hand."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_config
from wae_tf.model import step as step_lib
from wae_tf.perf import convs
from wae_tf.tools import benchmarking


@pytest.mark.slow
def test_quick_run_reports_positive_figures():
    options = benchmarking.Options(**{**benchmarking.QUICK, "regularizers": ("mmd",),
                                   "strategy": "default", "serving_runs": 1})
    results = json.loads(json.dumps(benchmarking.run(options)))  # JSON-ready
    run = results["training"]["mmd/w32"]
    for key in ("images_per_second", "step_seconds", "matmul_flops_per_second",
                "limit_flops_per_second", "step_flops_per_image", "profiled_step_flops_per_image",
                "limit_images_per_second", "fraction_of_limit", "fraction_of_matmul",
                "input_seconds", "input_share"):
        assert run[key] > 0, key
    # The limit is the best GEMM, never below the reference square matmul it also times.
    assert run["limit_flops_per_second"] >= run["matmul_flops_per_second"]
    assert run["fraction_of_limit"] <= run["fraction_of_matmul"]
    # 2 sizes x 3 paths + 2 batch-shaped GEMMs searched, the winner among them.
    assert len(results["gemm_flops_per_second"]) == 8
    assert run["limit_gemm"] in results["gemm_flops_per_second"]
    assert results["cpu"].startswith(("AVX-512", "AVX2", "below"))
    assert run["traces_after_first_call"] == 1 and run["retraces"] == 0
    assert run["steps_per_window"] == 2
    # 4 encoder convs, 2 transposed convs and the output layer, each with its plan.
    assert len(run["conv_plans"]) == 7 and all("forward=" in p for p in run["conv_plans"].values())
    # Hand count (3x forward) vs the count of the traced step's ops: 3x forward ignores that
    # the first conv needs no input gradient, and the ops' stride-2 shapes round
    # differently on odd sizes (7 -> 4): within 10%.
    assert run["profiled_step_flops_per_image"] == pytest.approx(run["step_flops_per_image"],
                                                                 rel=0.1)
    # The per-op profile (QUICK traces one step): every conv layer's forward and kernel
    # gradient, and the other ops, BatchNorm's among them.
    parts = {what for what, seconds, flops, gemm_rate in run["op_profile"]["conv_parts"]}
    assert {f"{layer} {part}" for layer in run["conv_plans"]
            for part in ("forward", "kernel_grad")} <= parts
    # FusedBatchNormV3, or with oneDNN's custom ops on, FusedBatchNormEx (BatchNorm and ReLU).
    assert any(what.startswith("FusedBatchNorm") for what, _ in run["op_profile"]["other"])
    # Each part's time, and the speed of its own GEMM timed alone.
    assert all(seconds > 0 and gemm_rate > 0
               for _, seconds, _, gemm_rate in run["op_profile"]["conv_parts"])
    for batch in ("16", "64"):
        assert results["mmd"][batch]["seconds"] > 0
    served = results["serving"]["w32"]
    assert set(served) == {f"{name}@{batch}" for name in benchmarking.SERVING_SIGNATURES
                           for batch in (1, 8)}
    assert all(v["latency_ms"] > 0 and v["images_per_second"] > 0 for v in served.values())
    assert "mmd/w32" in benchmarking.format_table(results)


def test_forward_flops_by_hand():
    config = tiny_config(width_divisor=4)
    state = step_lib.create_state(config, (28, 28, 1), 4, 1)
    flops = benchmarking.layer_forward_flops(state.decoder)
    # dec0: transposed 4x4 conv 7x7x256 -> 14x14x128: 49 input pixels * 16*256*128 MACs * 2.
    assert flops["decoder/dec0_conv"] == 49 * 16 * 256 * 128 * 2
    # enc1: 4x4 conv 14x14x32 -> 7x7x64, stride 2: 49 output pixels * 16*32*64 MACs * 2.
    enc1 = benchmarking.layer_forward_flops(state.encoder)["encoder/enc1_conv"]
    assert enc1 == 49 * 16 * 32 * 64 * 2
    # The profile's layer shapes (at batch 5) carry the same FLOPs, 5 times over.
    shapes = {**benchmarking.conv_layer_shapes(state.encoder, 5),
              **benchmarking.conv_layer_shapes(state.decoder, 5)}
    assert shapes["decoder/dec0_conv"] == convs.LayerShape(True, 5, 7, 256, 128, 4)
    assert shapes["encoder/enc1_conv"] == convs.LayerShape(False, 5, 14, 32, 64, 4)
    every = {**benchmarking.layer_forward_flops(state.encoder), **flops}
    assert {name: shape.forward_flops for name, shape in shapes.items()} == {
        name: 5 * f for name, f in every.items() if name.endswith("_conv")}


def test_matmul_flops_count_two_size_cubed_per_timed_call(monkeypatch):
    """A fake clock advancing 0.5 s per reading: each timed call lasts 0.5 s, so the rate is
    2 * size^3 FLOPs / 0.5 s, for every dtype the limit is measured in."""
    clock = iter(range(10 ** 6))
    monkeypatch.setattr(benchmarking.time, "perf_counter", lambda: 0.5 * next(clock))
    for dtype in ("float32", "bfloat16"):
        assert benchmarking.matmul_flops_per_second(64, 3, dtype) == 2 * 64 ** 3 / 0.5


def test_every_gemm_path_multiplies_m_by_k_by_n():
    """Each path's op computes the [m, n] product of an [m, k] and a [k, n] matrix."""
    for path in benchmarking.GEMM_PATHS:
        x, y = benchmarking._gemm_operands(  # pylint: disable=protected-access
            benchmarking.Gemm(4, 6, 8, path), "float32")
        product = tf.linalg.matmul(x, y, transpose_b=path == "matmul_transposed")
        a = np.reshape(x.numpy(), [4, 6])
        b = y.numpy().T if path == "matmul_transposed" else y.numpy()[-1] if y.ndim == 3 else y
        assert product.shape[-2:] == ((2, 8) if path == "batch_matmul" else (4, 8))
        np.testing.assert_allclose(np.reshape(product, [4, 8]), a @ np.asarray(b), rtol=1e-5,
                                   atol=1e-5, err_msg=path)
    with pytest.raises(ValueError, match="batch_matmul needs an even m"):
        benchmarking.gemm_flops_per_second(benchmarking.Gemm(3, 4, 4, "batch_matmul"), 1)


def test_the_limit_is_the_fastest_gemm(monkeypatch):
    """A fake clock making the transposed path 4x faster makes it the limit, at 2 m k n FLOPs
    per call."""
    seconds = {"matmul": 1.0, "matmul_transposed": 0.25, "batch_matmul": 1.0}
    monkeypatch.setattr(benchmarking, "gemm_flops_per_second",
                        lambda gemm, runs, dtype: gemm.flops / seconds[gemm.path])
    best, rates = benchmarking.find_limit(
        [benchmarking.Gemm(8, 8, 8, path) for path in benchmarking.GEMM_PATHS], 1)
    assert best == benchmarking.Gemm(8, 8, 8, "matmul_transposed")
    assert rates == {"matmul 8x8x8": 2 * 8 ** 3, "matmul_transposed 8x8x8": 2 * 8 ** 3 / 0.25,
                     "batch_matmul 8x8x8": 2 * 8 ** 3}


@pytest.mark.slow
def test_streaming_a_folder_reports_input_share_and_memory(tmp_path):
    """--input_dir streams synthetic JPEGs at 64x64 (decoded each step, or from --cache_dir)."""
    benchmarking.write_synthetic_images(str(tmp_path / "images"), 24)
    assert len(tf.io.gfile.glob(str(tmp_path / "images" / "*" / "*.jpg"))) == 24
    for cache in ("", str(tmp_path / "cache")):
        options = benchmarking.Options(**{**benchmarking.QUICK, "regularizers": ("mmd",),
                                          "strategy": "default", "serving_runs": 0,
                                          "mmd_batches": (), "windows": 1,
                                          "input_dir": str(tmp_path / "images"),
                                          "cache_dir": cache})
        results = benchmarking.run(options)
        run = results["training"]["mmd/w32"]
        assert results["data"].startswith("folder") and ("cache" in results["data"]) == bool(cache)
        assert run["input_share"] > 0 and run["peak_rss_mb"] > 100


def test_op_flops_by_hand():
    """2 FLOPs per multiply-add from the ops' shapes: a 3x3 conv [2, 8, 8, 3] -> 4 channels
    (2*8*8*4 outputs x 27), its two gradients the same, a transposed-A matmul [3, 5]^T [3, 4]
    (20 outputs x 3) and a batched matmul [9, 5, 3] x [9, 3, 4] (180 x 3); other ops 0."""
    def step(x, kernel, a, b):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = tf.nn.conv2d(x, kernel, 1, "SAME")
        return (tape.gradient(y, [x, kernel]), tf.matmul(a[0], b[0], transpose_a=True),
                tf.matmul(tf.transpose(a, [0, 2, 1]), b), tf.nn.relu(y))
    graph = tf.function(step, autograph=False).get_concrete_function(
        tf.TensorSpec([2, 8, 8, 3]), tf.TensorSpec([3, 3, 3, 4]), tf.TensorSpec([9, 3, 5]),
        tf.TensorSpec([9, 3, 4])).graph
    flops = {op.type: 0 for op in graph.get_operations()}
    for op in graph.get_operations():
        flops[op.type] += benchmarking.op_flops(op)
    conv = 2 * 2 * 8 * 8 * 4 * 27
    assert flops["Conv2D"] == flops["Conv2DBackpropInput"] == flops["Conv2DBackpropFilter"] == conv
    assert flops["MatMul"] == 2 * 20 * 3 and flops["BatchMatMulV2"] == 2 * 180 * 3
    assert flops["Relu"] == 0
