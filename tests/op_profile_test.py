"""The per-op profile: which ops a trace holds, and which conv layer part each belongs to."""

import pytest
import tensorflow as tf

from wae_tf.perf import op_profile


@pytest.mark.parametrize("name,op_type,expected", [
    # Tuned layers (convs.strided_conv): every part in its own scope, gradients too.
    ("decoder_1/dec1_conv_1/forward/Conv2D", "Conv2D", ("decoder/dec1_conv", "forward")),
    ("decoder_1/dec1_conv_1/forward/DepthToSpace", "DepthToSpace",
     ("decoder/dec1_conv", "forward")),
    ("decoder_1/dec0_conv_1/kernel_grad/Pad_2", "Pad", ("decoder/dec0_conv", "kernel_grad")),
    ("encoder/enc3_conv/input_grad/MatMul", "MatMul", ("encoder/enc3_conv", "input_grad")),
    # TF's own kernels and gradients.
    ("encoder_1/enc1_conv_1/Conv2D", "Conv2D", ("encoder/enc1_conv", "forward")),
    ("gradient_tape/encoder_1/enc1_conv_1/Conv2DBackpropFilter", "Conv2DBackpropFilter",
     ("encoder/enc1_conv", "kernel_grad")),
    ("gradient_tape/decoder_1/out_conv_1/conv2d_transpose/Conv2D", "Conv2D",
     ("decoder/out_conv", "input_grad")),
    # oneDNN's fused bias gradient (the op types come with oneDNN's renaming undone).
    ("gradient_tape/encoder/enc0_conv/Conv2DBackpropFilterWithBias",
     "Conv2DBackpropFilterWithBias", ("encoder/enc0_conv", "kernel_grad")),
    # Not a conv layer.
    ("gradient_tape/decoder_1/dec1_bn_1/FusedBatchNormGradV3", "FusedBatchNormGradV3", None),
    ("Adam/AssignSubVariableOp", "AssignSubVariableOp", None),
])
def test_conv_part_names_the_layer_and_part(name, op_type, expected):
    assert op_profile.conv_part(name, op_type) == expected


@pytest.mark.parametrize("event_type,expected", [
    ("_MklNativeConv2DBackpropFilter", "Conv2DBackpropFilter"), ("_MklMatMul", "MatMul"),
    ("_MklNativeFusedBatchNormV3", "FusedBatchNormV3"), ("MatMul", "MatMul")])
def test_base_op_type_undoes_onednns_renaming(event_type, expected):
    assert op_profile.base_op_type(event_type) == expected


def test_trace_returns_the_functions_ops_per_call():
    """A traced tf.function's MatMul and Relu appear once per call with positive times, and
    the call op that contains them is not counted."""
    @tf.function
    def layer(x):
        return tf.nn.relu(tf.matmul(x, x, name="product"), name="activation")

    x = tf.random.stateless_normal([128, 128], seed=[1, 2])
    layer(x)
    ops = op_profile.trace(lambda: layer(x).numpy(), calls=3)
    assert ops[("product", "MatMul")] > 0 and ops[("activation", "Relu")] > 0
    assert not [op for op in ops if op[1] in op_profile._CONTAINERS]


def test_summarize_groups_parts_with_their_flops_and_sorts_by_time():
    ops = {("decoder/dec1_conv/forward/Conv2D", "Conv2D"): 0.030,
           ("decoder/dec1_conv/forward/DepthToSpace", "DepthToSpace"): 0.010,
           ("gradient_tape/decoder/dec1_conv/Conv2DBackpropFilter", "Conv2DBackpropFilter"): 0.08,
           ("decoder/dec1_bn/FusedBatchNormV3", "FusedBatchNormV3"): 0.005,
           ("Adam/Mul", "Mul"): 0.001, ("Adam/Mul_1", "Mul"): 0.002}
    conv, other = op_profile.summarize(ops, {"decoder/dec1_conv": 4e9},
                                       {("decoder/dec1_conv", "forward"): 1.6e11})
    assert [(r.what, r.seconds) for r in conv] == [
        ("decoder/dec1_conv kernel_grad", 0.08), ("decoder/dec1_conv forward", 0.040)]
    assert conv[1].flops_per_second == pytest.approx(1e11)  # 4 GFLOP in 40 ms
    assert [(r.what, r.seconds) for r in other] == [("FusedBatchNormV3", 0.005),
                                                     ("Mul", pytest.approx(0.003))]
    text = op_profile.format_profile(conv, other, step_seconds=0.1, limit_flops_per_second=2e11)
    assert "decoder/dec1_conv forward" in text and "50.0% of the limit" in text
    # 100 GFLOP/s against its GEMM's 160; the kernel gradient's GEMM was not timed.
    assert "62.5% of its GEMM's 160.0" in text and text.count("of its GEMM") == 1
    # Only the timed part counts: 4 GFLOP at 160 GFLOP/s, 80% of the 200 GFLOP/s limit.
    assert "at its own GEMM's speed: 160.0 GF/s, 80.0% of the limit" in text
