"""Stride-2 convs part by part as TF's kernels, matmuls or sub-pixel convs, and the timing
that picks them."""

import logging
import time

import numpy as np
import pytest
import tensorflow as tf

from wae_tf.perf import convs

# Every form of every part, in three plans (the parts are computed independently).
PLANS = [convs.ConvPlan(*(convs.IMPLS[(i + j) % 3] for j in range(3))) for i in range(3)]

pytestmark = pytest.mark.numerics  # every test compares two computations


def _outputs_and_gradients(layer_fn, x, kernel):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = layer_fn(x, kernel)
        loss = tf.reduce_sum(tf.sin(y) * y)  # a non-linear loss: dy varies per pixel
    return [y, *tape.gradient(loss, [x, kernel])]


def _assert_all_close(got, expected):
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def _unit_output_scale(k, channels=5):
    """Kernel scale that keeps y of order 1. With y ~ 10, the loss's curvature (d dy / dy =
    2 cos y - y sin y) multiplies the forward's rounding ~20x into dy and the gradients: on an
    AVX-512 Xeon a sub-pixel forward's 1e-6 relative rounding reached 2.8e-4 there."""
    return 1.0 / np.sqrt(k * k * channels)


@pytest.mark.parametrize("plan", PLANS, ids=str)
@pytest.mark.parametrize("size,k", [(4, 4), (7, 4), (8, 5), (1, 4)])
def test_conv_equals_tf_conv2d(plan, size, k):
    """Output, input gradient and kernel gradient of every plan equal tf.nn.conv2d's."""
    x = tf.random.stateless_normal([3, size, size, 5], seed=[1, 2])
    kernel = tf.random.stateless_normal([k, k, 5, 6], seed=[3, 4]) * _unit_output_scale(k)
    expected = _outputs_and_gradients(lambda x, w: tf.nn.conv2d(x, w, 2, "SAME"), x, kernel)
    got = _outputs_and_gradients(lambda x, w: convs.strided_conv(x, w, plan, False), x, kernel)
    assert got[0].shape == (3, -(-size // 2), -(-size // 2), 6)
    _assert_all_close(got, expected)


@pytest.mark.parametrize("plan", PLANS, ids=str)
@pytest.mark.parametrize("size,k", [(1, 4), (4, 4), (7, 4), (4, 5), (3, 3)])
def test_conv_transpose_equals_tf_conv2d_transpose(plan, size, k):
    x = tf.random.stateless_normal([3, size, size, 5], seed=[5, 6])
    kernel = tf.random.stateless_normal([k, k, 6, 5], seed=[7, 8]) * _unit_output_scale(k)
    native = lambda x, w: tf.nn.conv2d_transpose(  # noqa: E731
        x, w, [3, 2 * size, 2 * size, 6], 2, "SAME")
    expected = _outputs_and_gradients(native, x, kernel)
    got = _outputs_and_gradients(lambda x, w: convs.strided_conv(x, w, plan, True), x, kernel)
    assert got[0].shape == (3, 2 * size, 2 * size, 6)
    _assert_all_close(got, expected)


@pytest.mark.parametrize("plan", [convs.ALL_NATIVE, convs.ConvPlan(convs.MATMUL)], ids=str)
@pytest.mark.parametrize("size,k,cout", [(7, 4, 1), (6, 5, 3), (5, 3, 2)])
def test_stride_one_conv_transpose_equals_tf(plan, size, k, cout):
    """The decoder's output layer: the shifted-sums forward equals TF's transposed conv."""
    x = tf.random.stateless_normal([3, size, size, 5], seed=[9, 9])
    kernel = tf.random.stateless_normal([k, k, cout, 5], seed=[9, 8]) * 0.2  # y of order 1
    native = lambda x, w: tf.nn.conv2d_transpose(  # noqa: E731
        x, w, [3, size, size, cout], 1, "SAME")
    got = _outputs_and_gradients(lambda x, w: convs.strided_conv(x, w, plan, True, 1), x, kernel)
    _assert_all_close(got, _outputs_and_gradients(native, x, kernel))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("size,k", [(1, 4), (4, 4), (7, 4), (14, 4), (4, 3), (2, 5), (3, 5),
                                    (8, 5), (4, 6)])
def test_winograd_plan_equals_tf(transpose, size, k):
    """Every part in the Winograd form equals TF's, at sub-pixel sizes that take each tile
    size (transposed n, k=4: S = n + 1 = 2, 5, 8, 15 -> m = 2, 3, 4, 3; k=5: a 3x3 window and
    S = n = 2, 3, 8 -> m = 2, 3, 4; the conv of 2n the same)."""
    plan = convs.ConvPlan(convs.WINOGRAD, convs.WINOGRAD, convs.WINOGRAD)
    n = size if transpose else 2 * size
    x = tf.random.stateless_normal([3, n, n, 5], seed=[size, k])
    # y of order 1: sin(y) y's curvature would magnify the forward's rounding into dy.
    kernel = tf.random.stateless_normal([k, k, 6, 5] if transpose else [k, k, 5, 6],
                                        seed=[k, 1]) / (k * np.sqrt(5))
    if transpose:
        native = lambda x, w: tf.nn.conv2d_transpose(  # noqa: E731
            x, w, [3, 2 * n, 2 * n, 6], 2, "SAME")
    else:
        native = lambda x, w: tf.nn.conv2d(x, w, 2, "SAME")  # noqa: E731
    got = _outputs_and_gradients(lambda x, w: convs.strided_conv(x, w, plan, transpose), x, kernel)
    for g, e in zip(got, _outputs_and_gradients(native, x, kernel)):
        # Winograd's rounding scales with the largest value (wae_tf.perf.winograd): 1e-5 of it.
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5 * np.abs(e).max())


def test_subpixel_layout_of_the_paper_kernels():
    """k=4: a 2-tap stride-1 conv, phase 0 from taps 3, 1 and phase 1 (shifted one on) from
    taps 2, 0; k=5: 3 taps, phase 0 without one (a zero block in its kernel)."""
    assert convs.subpixel_layout(4) == (2, 1, ((0, {0: 3, 1: 1}), (1, {0: 2, 1: 0})))
    assert convs.subpixel_layout(5) == (3, 1, ((0, {0: 3, 1: 1}), (0, {0: 4, 1: 2, 2: 0})))
    kernel = tf.reshape(tf.range(4 * 4 * 1 * 1, dtype=tf.float32), [4, 4, 1, 1])
    stacked = convs.subpixel_kernel(kernel)  # [2, 2, 1, 4]: phases (0,0) (0,1) (1,0) (1,1)
    assert stacked.shape == (2, 2, 1, 4)
    np.testing.assert_array_equal(stacked[0, 0, 0], [3 * 4 + 3, 3 * 4 + 2, 2 * 4 + 3, 2 * 4 + 2])


def test_each_part_has_one_gemm_with_its_flops():
    """The first conv at width 1 and dec0 at width 4, by hand: (m, k, n) of patches x kernel
    (the forward of a conv, the input gradient of a transposed conv), its adjoint, and
    patches transposed x the other side (the kernel gradient)."""
    conv = convs.LayerShape(False, 100, 28, 1, 128, 4)  # -> 14 x 14 positions
    assert [conv.part_gemm(p) for p in convs.PARTS] == [
        (19600, 16, 128), (19600, 128, 16), (16, 19600, 128)]
    dec0 = convs.LayerShape(True, 100, 7, 256, 128, 4)  # 7 x 7 input positions scatter
    assert [dec0.part_gemm(p) for p in convs.PARTS] == [
        (4900, 256, 2048), (4900, 2048, 256), (2048, 4900, 256)]
    for shape in (conv, dec0, convs.LayerShape(True, 100, 28, 64, 1, 4, stride=1)):
        for part in convs.PARTS:
            assert 2 * np.prod(shape.part_gemm(part)) == shape.forward_flops


@pytest.mark.parametrize("impl", [convs.MATMUL, convs.SUBPIXEL])
def test_no_matmul_input_gradient_for_odd_sizes_with_odd_kernels(impl):
    """SAME pads 7 -> 4 with a 5-tap kernel differently from 8 -> 4: the cropped phase form
    would be wrong there, so it is refused (and never offered by tune)."""
    assert convs.matmul_transpose_fits(8, 5) and convs.matmul_transpose_fits(7, 4)
    assert not convs.matmul_transpose_fits(7, 5)
    with pytest.raises(ValueError, match="odd size 7"):
        convs.conv2d_transpose(tf.zeros([1, 4, 4, 2]), tf.zeros([5, 5, 3, 2]), 7, impl)
    odd = convs.LayerShape(False, 1, 7, 2, 3, 5)
    assert not odd.has_form("forward", convs.SUBPIXEL) and odd.has_form("forward", convs.MATMUL)


def test_tune_picks_the_faster_form_of_each_part(monkeypatch):
    """With timings where the kernel gradient is fastest as a matmul and the forward in the
    sub-pixel form, the plan says so;
    the plan is cached per shape, and small layers are not timed."""
    monkeypatch.setattr(convs, "_PLANS", {})
    labels = {}  # tf.function -> (part, impl)
    original = convs._part_candidates

    def labelled_candidates(*args):
        parts = original(*args)
        for part, impls in parts.items():
            for impl, (fn, _) in impls.items():
                labels[fn] = (part, impl)
        return parts

    def fake_seconds(fn, *args, **kwargs):  # kernel gradient: matmul fastest; forward: sub-pixel
        fastest = {"kernel_grad": convs.MATMUL, "forward": convs.SUBPIXEL}
        part, impl = labels[fn]
        return 0.5 if fastest.get(part, convs.NATIVE) == impl else 1.0

    monkeypatch.setattr(convs, "_part_candidates", labelled_candidates)
    monkeypatch.setattr(convs, "_seconds", fake_seconds)
    # 2 * 4 * 8*8 * 4*4 * 64*128 = 67 MFLOP: above MIN_TUNED_FLOPS.
    shape = convs.LayerShape(True, 4, 8, 64, 128, 4)
    plan = convs.tune(shape)
    assert plan == convs.ConvPlan(convs.SUBPIXEL, convs.NATIVE, convs.MATMUL)
    assert len(labels) == 12  # 3 parts x 4 forms
    labels.clear()
    assert convs.tune(shape) is plan and not labels  # cached, not re-timed
    small = convs.LayerShape(True, 4, 2, 8, 8, 4)
    assert convs.tune(small) == convs.ALL_NATIVE and not labels  # too small to time
    # Stride 1 (the decoder's output layer): only the forward has a matmul form to time.
    plan = convs.tune(convs.LayerShape(True, 100, 28, 64, 1, 4, stride=1))
    assert plan == convs.ALL_NATIVE and sorted(labels.values()) == [
        ("forward", convs.MATMUL), ("forward", convs.NATIVE)]
    # Winograd only in float32; for 5-tap kernels too (a 3x3 sub-pixel window), not 7-tap.
    labels.clear()
    convs.tune(convs.LayerShape(True, 4, 8, 64, 128, 4), tf.float16)
    assert len(labels) == 9 and convs.WINOGRAD not in {impl for _, impl in labels.values()}
    labels.clear()
    convs.tune(convs.LayerShape(True, 4, 8, 64, 128, 5))
    assert len(labels) == 12
    labels.clear()
    convs.tune(convs.LayerShape(True, 4, 8, 64, 128, 7))
    assert len(labels) == 9 and convs.WINOGRAD not in {impl for _, impl in labels.values()}


@pytest.mark.slow
def test_tune_times_real_layers():
    """An un-mocked tune of a mid-sized conv (2 * 16 * 4*4 * 4*4 * 64*128 = 67 MFLOP) returns a
    plan of valid forms, and the conv computed by that plan is tf.nn.conv2d."""
    plan = convs.tune(convs.LayerShape(False, 16, 8, 64, 128, 4))
    assert set(vars(plan).values()) <= set(convs.IMPLS)
    x = tf.random.stateless_normal([2, 8, 8, 64], seed=[1, 1])
    kernel = tf.random.stateless_normal([4, 4, 64, 128], seed=[2, 2]) * 0.03  # ~1/sqrt(fan-in)
    _assert_all_close(
        _outputs_and_gradients(lambda x, w: convs.strided_conv(x, w, plan, False), x, kernel),
        _outputs_and_gradients(lambda x, w: tf.nn.conv2d(x, w, 2, "SAME"), x, kernel))


def test_a_form_slower_than_give_up_is_not_timed_further():
    """`_seconds` stops after the warm-up (which traces) and one timed call slower than give_up
    (twice the best form so far in tune); otherwise it times `runs` calls after the warm-up."""
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)
        return tf.constant(0.0)

    assert convs._seconds(slow, give_up=0.01) >= 0.02 and len(calls) == 2
    calls.clear()
    assert convs._seconds(slow, runs=2) >= 0.02 and len(calls) == 3


@pytest.mark.slow
def test_tune_does_not_warn_of_retracing(monkeypatch):
    """Each candidate form is its own tf.function, traced once: TF's frequent-retracing warning
    (which counts functions by their Python code) must not fire and alarm the user during tune."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    monkeypatch.setattr(convs, "_PLANS", {})
    tf.get_logger().addHandler(handler)
    try:
        convs.tune(convs.LayerShape(False, 16, 8, 64, 128, 4))
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [m for m in messages if "retracing" in m]


def test_tuning_is_summarised_in_one_line(monkeypatch):
    monkeypatch.setattr(convs, "_TUNED", [1.25, None, 0.5])
    assert convs.tuning_summary() == ("Conv forms of 3 layers: timed 2 in 1.8 s, 1 from the "
                                      "plan cache (each layer's choice: --verbosity=1).")
    assert convs.tuning_summary() == ""
