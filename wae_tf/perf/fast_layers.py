"""Faster forms of the networks' conv and BatchNorm layers, with the same variables and maths.

Training builds the networks from `training_layers(config)`; export and evaluation build them
from plain Keras layers (networks.KERAS_LAYERS), so a checkpoint restores into either and the
SavedModel holds no machine-specific graph code.
- `TunedConv2D` / `TunedConv2DTranspose`: each part (forward, input and kernel gradients) as
  TF's kernel or a matmul form, chosen per layer by --conv_impl (wae_tf.perf.convs).
- `FusedBatchNorm`: the training pass as one FusedBatchNormV3 op instead of ~10 elementwise ops.
"""

import dataclasses
import functools

import keras
import tensorflow as tf
from keras import layers

from wae_tf.config import Config
from wae_tf.model import networks
from wae_tf.perf import convs, plan_cache


def _timed_on_this_machine(config: Config) -> bool:
    """Whether --conv_impl=auto times the layers: on CPUs, unless --deterministic."""
    return (config.conv_impl == "auto" and not config.deterministic
            and not tf.config.list_logical_devices("GPU"))


def _tuning_args(config: Config):
    """convs.tune's dtype and cache file arguments under `config`."""
    return keras.config.dtype_policy().compute_dtype, plan_cache.resolve(config.conv_plan_cache)


def conv_plan(config: Config, shape: convs.LayerShape, defer: bool = False) -> convs.ConvPlan:
    """--conv_impl for one layer.

    auto: TF's kernels with a GPU; on CPUs each part timed on this machine (convs.tune), or,
    with `defer`, a plan timed before (this process or the plan cache) else convs.rule_plan
    until time_untimed; with --deterministic (a rerun must compute the same) the rule always,
    as --conv_impl=rule does.
    """
    if config.conv_impl == "native" or (config.conv_impl == "auto"
                                        and tf.config.list_logical_devices("GPU")):
        return convs.ALL_NATIVE
    if config.conv_impl == "patches":
        return convs.matmul_plan(shape)
    if config.deterministic or config.conv_impl == "rule":
        return convs.rule_plan(shape)
    if defer:
        return convs.known_plan(shape, *_tuning_args(config)) or convs.rule_plan(shape)
    return convs.tune(shape, *_tuning_args(config))


def untimed(config: Config, models) -> list:
    """The conv layers of `models` that --conv_impl=auto left on convs.rule_plan because they
    have not been timed on this machine yet (training_layers(defer_tuning=True))."""
    if not _timed_on_this_machine(config):
        return []
    layers_ = [layer for model in models for layer in model._flatten_layers(include_self=False)
               if isinstance(layer, _TunedConv) and layer.conv_shape is not None]
    return [layer for layer in layers_
            if convs.known_plan(layer.conv_shape, *_tuning_args(config)) is None]


def time_untimed(config: Config, untimed_layers, should_stop=lambda: False) -> int:
    """Time the layers untimed() listed (convs.tune: kept in the plan cache for later runs; a
    shape timed already is not timed again) and switch each to its faster forms, stopping
    between layers once should_stop(); returns how many plans changed. A tf.function traced
    before keeps the old forms: trace it again."""
    changed = 0
    for layer in untimed_layers:
        if should_stop():
            break
        plan = convs.tune(layer.conv_shape, *_tuning_args(config))
        changed += plan != layer.plan
        layer.plan = plan
    return changed


class _TunedConv(layers.Layer):
    """A SAME (transposed) conv, `filters` outputs, k x k kernel, stride 2 (or 1), optional
    bias, whose parts are computed as its ConvPlan says (convs.strided_conv).

    The plan is given, or chosen when the layer is built by `planner(convs.LayerShape)`.
    """

    transpose = False

    def __init__(self, filters, kernel_size, strides=2, padding="same", use_bias=False,
                 kernel_initializer="glorot_uniform", plan=None, planner=None, batch_size=-1,
                 **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if padding.lower() != "same" or strides not in (1, 2):
            raise ValueError(f"{type(self).__name__} is a SAME conv of stride 1 or 2; got "
                             f"padding={padding!r}, strides={strides}.")
        if plan is None and planner is None:
            raise ValueError(f"{type(self).__name__} needs a plan or a planner.")
        self.filters, self.kernel_size = filters, kernel_size
        self.strides, self.use_bias, self.batch_size = strides, use_bias, batch_size
        self.plan = convs.ConvPlan(**plan) if isinstance(plan, dict) else plan  # dict: from_config
        self._planner = planner
        self.conv_shape = None  # the convs.LayerShape a planner chose the plan for

    def _add_kernel(self, cin):
        raise NotImplementedError

    def build(self, input_shape):
        cin = input_shape[-1]
        self._add_kernel(cin)
        if self.use_bias:  # `bias`, as in the Keras layers
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        if self.plan is None:
            self.conv_shape = convs.LayerShape(self.transpose, self.batch_size, input_shape[1],
                                               cin, self.filters, self.kernel_size, self.strides)
            self.plan = self._planner(self.conv_shape)

    def call(self, x):
        kernel = tf.cast(self.kernel, x.dtype)
        if self.plan.all_native:  # TF's ops and registered gradients, as in the Keras layers
            y = (convs.conv2d_transpose(x, kernel, x.shape[1] * self.strides, convs.NATIVE,
                                        self.strides) if self.transpose
                 else convs.conv2d(x, kernel, convs.NATIVE, self.strides))
        else:
            y = convs.strided_conv(x, kernel, self.plan, self.transpose, self.strides)
        return y + tf.cast(self.bias, y.dtype) if self.use_bias else y

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "plan": dataclasses.asdict(self.plan) if self.plan else None,
                "batch_size": self.batch_size}


@keras.saving.register_keras_serializable(package="wae_tf")
class TunedConv2D(_TunedConv):
    """layers.Conv2D(filters, k, strides, padding="same", use_bias), part by part as TF's
    kernel or matmuls; same kernel variable [k, k, C_in, C_out]."""

    def _add_kernel(self, cin):
        self._kernel = self.add_weight(  # `_kernel`, as in layers.Conv2D: checkpoints match
            name="kernel", shape=(self.kernel_size, self.kernel_size, cin, self.filters),
            initializer=self.kernel_initializer)

    @property
    def kernel(self):
        return self._kernel


@keras.saving.register_keras_serializable(package="wae_tf")
class TunedConv2DTranspose(_TunedConv):
    """layers.Conv2DTranspose(filters, k, strides, padding="same", use_bias), part by part as
    TF's kernel or matmuls; same kernel variable [k, k, C_out, C_in]."""

    transpose = True

    def _add_kernel(self, cin):
        self.kernel = self.add_weight(  # `kernel`, as in layers.Conv2DTranspose
            name="kernel", shape=(self.kernel_size, self.kernel_size, self.filters, cin),
            initializer=self.kernel_initializer)


@keras.saving.register_keras_serializable(package="wae_tf")
class FusedBatchNorm(layers.BatchNormalization):
    """layers.BatchNormalization whose training pass is TF's fused kernel where it can be.

    Keras 3 normalises with ~10 separate elementwise ops (and, synchronised, a full-size tensor
    of ones to count the batch); FusedBatchNormV3 (oneDNN on CPU, cuDNN on GPU) is one op each
    way. Used when the statistics are this replica's alone: one replica in sync, or
    `synchronized=False`; otherwise Keras's all-reduced moments. Same variables, same maths
    (moving variance biased, as in Keras); the rounding differs from Keras's formula.
    """

    def call(self, inputs, training=None, mask=None):
        ctx = tf.distribute.get_replica_context()
        local = not self.synchronized or ctx is None or ctx.num_replicas_in_sync == 1
        if not (training and self.trainable and local and mask is None and not self.renorm
                and self.axis in (-1, len(inputs.shape) - 1) and len(inputs.shape) == 4):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # statistics in float32, as Keras does
        channels = x.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels])
        beta = self.beta if self.center else tf.zeros([channels])
        y, mean, unbiased_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.cast(gamma, tf.float32), offset=tf.cast(beta, tf.float32),
            mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=self.epsilon, is_training=True)
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = unbiased_var * (count - 1.0) / count  # the op returns n/(n-1) x the variance
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.stop_gradient(batch) * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def tuned_convs(config: Config, batch_norm=layers.BatchNormalization,
                defer_tuning: bool = False) -> networks.LayerSet:
    """Convs planned per layer by --conv_impl (timed at the global --batch_size, so the choice
    does not depend on the replica count; with `defer_tuning`, see conv_plan), with the given
    BatchNorm."""
    planner = functools.partial(conv_plan, config, defer=defer_tuning)
    make = lambda cls: functools.partial(cls, planner=planner,  # noqa: E731
                                         batch_size=config.batch_size)
    return networks.LayerSet(conv=make(TunedConv2D), conv_transpose=make(TunedConv2DTranspose),
                             batch_norm=batch_norm)


def training_layers(config: Config, defer_tuning: bool = False) -> networks.LayerSet:
    """The fastest layers for training on this machine: tuned convs and the fused BatchNorm.
    With `defer_tuning` the layers not timed before start on a fixed rule (untimed,
    time_untimed): the first step comes without waiting for the timing."""
    return tuned_convs(config, batch_norm=FusedBatchNorm, defer_tuning=defer_tuning)
