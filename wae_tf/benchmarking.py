"""Throughput of training and serving, measured against this machine's matmul FLOP/s (fp32;
with --mixed_precision, the matmul of the layers' 16-bit compute dtype); python -m
wae_tf.benchmark prints a table and one JSON line. The hardware limit is re-measured right before every timed
training window (a large matmul), so a fraction of the limit compares figures taken under the
same load; every figure is the median over windows.
"""

import dataclasses
import os
import resource
import statistics
import tempfile
import time
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import cluster
from wae_tf import convs
from wae_tf import data
from wae_tf import regularizers
from wae_tf import serving
from wae_tf import training
from wae_tf import warmup
from wae_tf.config import Config

# Layers whose multiply-adds count as the work of the network (BatchNorm, ReLU, Adam, the
# regulariser are not counted: they are the overhead the fraction of the limit exposes).
_COUNTED_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul")
SERVING_SIGNATURES = ("decode", "reconstruct", "sample")


@dataclasses.dataclass(frozen=True)
class Options:
    """What to measure and for how long."""
    width_divisors: Sequence[int] = (1, 4)
    regularizers: Sequence[str] = ("mmd", "gan")
    batch_size: int = 100
    windows: int = 5
    window_steps: int = 0  # 0: enough steps for ~2 s per window (at least 2)
    steps_per_loop: int = 1
    jit_compile: bool = False
    mixed_precision: str = "none"
    conv_impl: str = "auto"
    matmul_size: int = 4096
    matmul_runs: int = 3
    mmd_batches: Sequence[int] = (100, 400, 1600)
    serving_batches: Sequence[int] = (1, 256)
    serving_runs: int = 5
    data_dir: str = ""
    strategy: str = "auto"
    input_dir: str = ""  # a folder of images to stream at 64x64 instead of Fashion-MNIST
    cache_dir: str = ""  # with input_dir: read the decoded copy (--cache_dir) instead of decoding


QUICK = dict(width_divisors=(32,), batch_size=8, windows=2, window_steps=2, matmul_size=256,
             matmul_runs=2, mmd_batches=(16, 64), serving_batches=(1, 8), serving_runs=2)


# ----------------------------------------------------------------------------- the limit


# The dtype layers compute in under each --mixed_precision: the limit is that dtype's matmul.
COMPUTE_DTYPES = {"none": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def matmul_flops_per_second(size: int, runs: int, dtype: str = "float32") -> float:
    """Median FLOP/s of a [size, size] x [size, size] matmul in `dtype` (2 size^3 FLOPs each)."""
    a = tf.cast(tf.random.stateless_normal([size, size], seed=[1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([size, size], seed=[3, 4]), dtype)
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    matmul(a, b).numpy()  # warm-up: trace, allocate
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / statistics.median(times)


def layer_forward_flops(model) -> Dict[str, int]:
    """Forward FLOPs per example of each conv (Conv2D, TunedConv2D), transposed conv
    (Conv2DTranspose, TunedConv2DTranspose) and Dense layer (2 per MAC).

    Conv2D: output positions x k*k*C_in*C_out; Conv2DTranspose: input positions x the same
    (every input pixel scatters a k x k x C_out patch); Dense: C_in*C_out.
    """
    flops = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "TunedConv2D", "Conv2DTranspose", "TunedConv2DTranspose",
                        "Dense"):
            continue
        kernel = int(np.prod(layer.kernel.shape))
        if kind in ("Conv2D", "TunedConv2D"):
            positions = np.prod(layer.output.shape[1:3])
        elif kind in ("Conv2DTranspose", "TunedConv2DTranspose"):
            positions = np.prod(layer.input.shape[1:3])
        else:
            positions = 1
        flops[f"{model.name}/{layer.name}"] = int(2 * positions * kernel)
    return flops


def analytic_step_flops(state: training.TrainState) -> Dict[str, float]:
    """FLOPs per image of one training step: 3x the forward FLOPs of encoder and decoder
    (forward, gradient of the input, gradient of the weights), plus ~8x the discriminator's
    (its update: 2 forward passes with both gradients; the encoder's loss: 1 with the input's)."""
    ae = sum(layer_forward_flops(state.encoder).values())
    ae += sum(layer_forward_flops(state.decoder).values())
    disc = sum(layer_forward_flops(state.discriminator).values()) if state.discriminator else 0
    return {"forward": float(ae), "step": float(3 * ae + 8 * disc)}


def profiled_step_flops(train_fn, iterator, global_batch: int) -> float:
    """FLOPs per image of the conv and matmul ops of the traced training function, counted by
    tf.compat.v1.profiler. Its graph holds the first step inline (the rest run in a loop body).
    0 with --jit_compile: the step is then one XlaLaunch op the profiler cannot see into."""
    graph = train_fn.get_concrete_function(iterator, tf.constant(1)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph, cmd="op", options=options)
    counted = sum(node.total_float_ops for node in profile.children if node.name in _COUNTED_OPS)
    return counted / global_batch


# ----------------------------------------------------------------------------- training


def load_train_data(config: Config):
    """(ImageData or ImageFiles, source): the folder of --input_dir streamed, else Fashion-MNIST's
    train split if present, else synthetic 28x28 noise."""
    if config.dataset == "folder":
        return data.load_split(config, "train"), f"folder {config.data_dir} (streamed" + (
            f", cache {config.cache_dir})" if config.cache_dir else ", decoded every step)")
    try:
        return data.load_split(config, "train"), "fashion_mnist"
    except Exception:  # pylint: disable=broad-except; any missing-data error -> synthetic
        images = np.random.default_rng(0).integers(0, 256, (10000, 28, 28, 1), dtype=np.uint8)
        return data.ImageData(images, np.zeros(10000, np.int64), "synthetic/train"), "synthetic"


def write_synthetic_images(directory: str, num: int, size: int = 64, seed: int = 0) -> None:
    """`num` JPEG files of smooth random colour blobs (size x size) in 100 sub-folders, to
    measure streaming at scale without a data set."""
    rng = np.random.default_rng(seed)
    for i in range(num):
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        image = tf.image.resize(coarse[None], [size, size])[0]
        path = os.path.join(directory, f"{i % 100:02d}", f"{i:07d}.jpg")
        if i < 100:
            tf.io.gfile.makedirs(os.path.dirname(path))
        tf.io.write_file(path, tf.io.encode_jpeg(tf.cast(image, tf.uint8), quality=90))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_input(dataset: tf.data.Dataset, num: int) -> float:
    """Median seconds of next() on the training pipeline alone (after a warm-up batch): an upper
    bound of the step's wait, since the prefetching pipeline overlaps with the step."""
    iterator = iter(dataset)
    next(iterator)
    times = []
    for _ in range(num):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _run_window(train_fn, iterator, calls: int, steps_per_call: int) -> float:
    """Seconds for `calls` calls of train_fn, fetching the losses after each as the loop does."""
    start = time.perf_counter()
    for _ in range(calls):
        {k: float(v) for k, v in train_fn(iterator, tf.constant(steps_per_call)).items()}
    return time.perf_counter() - start


def benchmark_training(config: Config, train: data.ImageData, options: Options) -> dict:
    """Images/s of the training loop's step (pipeline included) and the fraction of the limit."""
    strategy = cluster.create_strategy(config)
    with strategy.scope():
        state = training.create_state(config, train.image_shape, 600, 1)
    dataset = data.distribute(strategy, train, config.batch_size, config.seed)
    iterator = iter(dataset)
    train_fn = training.make_train_fn(config, state, strategy)
    flops = analytic_step_flops(state)
    _run_window(train_fn, iterator, 1, config.steps_per_loop)  # trace + first step
    traces_first = train_fn.experimental_get_tracing_count()
    seconds = _run_window(train_fn, iterator, 1, config.steps_per_loop)  # second warm-up
    calls = max(1, options.window_steps // config.steps_per_loop)
    if not options.window_steps:  # about 2 s per window
        calls = max(1, int(2.0 / seconds))
    rates, fractions, limits = [], [], []
    for _ in range(options.windows):
        limits.append(matmul_flops_per_second(options.matmul_size, options.matmul_runs,
                                              COMPUTE_DTYPES[config.mixed_precision]))
        # One untimed call: the matmul's 200 MB evict the step's working set from the caches
        # and the allocator, which slows the next steps.
        _run_window(train_fn, iterator, 1, config.steps_per_loop)
        seconds = _run_window(train_fn, iterator, calls, config.steps_per_loop)
        rates.append(calls * config.steps_per_loop * config.batch_size / seconds)
        fractions.append(rates[-1] * flops["step"] / limits[-1])
    step_s = config.batch_size / statistics.median(rates)
    input_s = time_input(dataset, 20)
    retraces = train_fn.experimental_get_tracing_count() - traces_first
    return {
        "images_per_second": statistics.median(rates),
        "step_seconds": step_s,
        "matmul_flops_per_second": statistics.median(limits),
        "matmul_dtype": COMPUTE_DTYPES[config.mixed_precision],
        "step_flops_per_image": flops["step"],
        "forward_flops_per_image": flops["forward"],
        "profiled_step_flops_per_image": profiled_step_flops(train_fn, iterator,
                                                             config.batch_size),
        "limit_images_per_second": statistics.median(limits) / flops["step"],
        "fraction_of_limit": statistics.median(fractions),
        "input_seconds": input_s,
        "input_share": input_s / step_s,
        "steps_per_window": calls * config.steps_per_loop,
        "traces_after_first_call": traces_first,
        "retraces": retraces,
        "conv_plans": conv_plans(state),
        "peak_rss_mb": peak_rss_mb(),
        "state": state,
    }


def conv_plans(state: training.TrainState) -> Dict[str, str]:
    """How each conv layer computes its forward and gradients (--conv_impl; convs.tune)."""
    return {f"{model.name}/{layer.name}": str(getattr(layer, "plan", convs.ALL_NATIVE))
            for model in (state.encoder, state.decoder) for layer in model.layers
            if layer.name.endswith("_conv")}


# ----------------------------------------------------------------------------- MMD


def time_mmd(batch: int, z_dim: int, runs: int = 5) -> float:
    """Median seconds of mmd_penalty (IMQ) and its gradient on [batch, z_dim] codes."""
    qz = tf.random.stateless_normal([batch, z_dim], seed=[5, 6])
    pz = tf.random.stateless_normal([batch, z_dim], seed=[7, 8])

    @tf.function
    def value_and_grad(qz, pz):
        with tf.GradientTape() as tape:
            tape.watch(qz)
            value = regularizers.mmd_penalty(qz, pz, "imq")
        return value, tape.gradient(value, qz)

    value_and_grad(qz, pz)[1].numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        value_and_grad(qz, pz)[1].numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------- serving


def benchmark_serving(state: training.TrainState, config: Config, image_shape,
                      options: Options) -> Dict[str, dict]:
    """Latency (median s per call) and images/s of the exported signatures, loaded back."""
    with tempfile.TemporaryDirectory() as base:
        path = serving.export_saved_model(state.encoder, state.decoder, config, image_shape,
                                         base, 1)
        loaded = tf.saved_model.load(path)
        results = {}
        for name in SERVING_SIGNATURES:
            signature = loaded.signatures[name]
            for batch in options.serving_batches:
                inputs = warmup.example_inputs(name, batch, config.z_dim, image_shape)
                signature(**inputs)  # warm-up
                times = []
                for _ in range(options.serving_runs):
                    start = time.perf_counter()
                    next(iter(signature(**inputs).values())).numpy()
                    times.append(time.perf_counter() - start)
                latency = statistics.median(times)
                results[f"{name}@{batch}"] = {"latency_ms": 1e3 * latency,
                                              "images_per_second": batch / latency}
    return results


# ----------------------------------------------------------------------------- the run


def benchmark_config(options: Options, width_divisor: int, regularizer: str) -> Config:
    """The training Config of one measured run (paper defaults otherwise)."""
    folder = dict(dataset="folder", data_dir=options.input_dir, image_size=64, in_memory="false",
                  cache_dir=options.cache_dir) if options.input_dir else dict(
                      data_dir=options.data_dir)
    return Config(width_divisor=width_divisor, regularizer=regularizer,
                  batch_size=options.batch_size, train_steps=1,
                  steps_per_loop=options.steps_per_loop,
                  jit_compile=options.jit_compile, mixed_precision=options.mixed_precision,
                  conv_impl=options.conv_impl, export=False, strategy=options.strategy,
                  **folder).validate()


def run(options: Options) -> dict:
    """Every measurement of the benchmark as a JSON-ready dict."""
    results = {"options": dataclasses.asdict(options), "training": {}, "serving": {}}
    train, source = load_train_data(benchmark_config(options, 1, "mmd"))
    results["data"] = source
    for width in options.width_divisors:
        for regularizer in options.regularizers:
            config = benchmark_config(options, width, regularizer)
            measured = benchmark_training(config, train, options)
            logging.info("%s/w%d: %.1f images/s, %.1f%% of the limit (load %s)", regularizer,
                         width, measured["images_per_second"],
                         100 * measured["fraction_of_limit"], machine_load())
            state = measured.pop("state")
            results["training"][f"{regularizer}/w{width}"] = measured
        if options.serving_runs:
            results["serving"][f"w{width}"] = benchmark_serving(state, config, train.image_shape,
                                                                options)
    step_s = {key: value["step_seconds"] for key, value in results["training"].items()}
    results["mmd"] = {}
    for batch in options.mmd_batches:
        seconds = time_mmd(batch, 8)
        results["mmd"][str(batch)] = {
            "seconds": seconds,
            **{f"share_of_{key}_step": seconds / s for key, s in step_s.items()}}
    return results


def format_table(results: dict) -> str:
    """A human-readable summary of `run`'s results."""
    lines = [f"data: {results['data']}; machine load: {machine_load()}",
             f"{'run':10} {'img/s':>8} {'limit':>8} {'frac':>6} {'step s':>8} {'input':>7} "
             f"{'GF/img':>7} {'prof GF':>7} {'matmul GF/s':>11} {'retrace':>7}"]
    for key, r in results["training"].items():
        lines.append(f"{key:10} {r['images_per_second']:8.1f} {r['limit_images_per_second']:8.1f} "
                     f"{r['fraction_of_limit']:6.1%} {r['step_seconds']:8.4f} "
                     f"{r['input_share']:7.2%} {r['step_flops_per_image'] / 1e9:7.3f} "
                     f"{r['profiled_step_flops_per_image'] / 1e9:7.3f} "
                     f"{r['matmul_flops_per_second'] / 1e9:11.1f} {r['retraces']:7d}"
                     + ("" if r["matmul_dtype"] == "float32" else f"  ({r['matmul_dtype']})"))
        matmuls = [f"{name.split('/')[1]} ({plan})" for name, plan in r["conv_plans"].items()
                   if plan != str(convs.ALL_NATIVE)]
        lines.append(f"  {'':8} parts on matmuls: {', '.join(matmuls) or 'none'}; peak RSS "
                     f"{r['peak_rss_mb']:.0f} MB")
    lines.append("MMD (IMQ, z_dim 8) value+gradient:")
    for batch, r in results["mmd"].items():
        shares = " ".join(f"{k[9:]}={v:.1%}" for k, v in r.items() if k.startswith("share"))
        lines.append(f"  batch {batch:>5}: {1e3 * r['seconds']:8.2f} ms  {shares}")
    lines.append("SavedModel signatures (latency ms, images/s):")
    for width, sigs in results["serving"].items():
        text = "  ".join(f"{k} {v['latency_ms']:.2f} ms {v['images_per_second']:.0f}/s"
                         for k, v in sigs.items())
        lines.append(f"  {width}: {text}")
    return "\n".join(lines)


def machine_load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
