"""Throughput of training and serving, measured against this machine's limit: the best GEMM
FLOP/s it reaches in this process (fp32; with --mixed_precision, the layers' 16-bit compute
dtype), searched once over square and batch-shaped sizes and TF's matmul ops, then re-timed
right before every timed training window so a fraction of the limit compares figures taken
under the same load. Every figure is the median over windows; python -m wae_tf.benchmark prints
a table and one JSON line.
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

from wae_tf import data
from wae_tf.config import Config
from wae_tf.model import regularizers
from wae_tf.model import step as step_lib
from wae_tf.perf import convs, fast_layers, hardware, op_profile
from wae_tf.runtime import cluster
from wae_tf.serving import saved_model, warmup

# Layers whose multiply-adds count as the work of the network (BatchNorm, ReLU, Adam, the
# regulariser are not counted: they are the overhead the fraction of the limit exposes).
_COUNTED_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "MatMul",
                "BatchMatMulV2")
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
    matmul_size: int = 4096  # the square tf.matmul earlier figures were fractions of
    matmul_runs: int = 3
    limit_sizes: Sequence[int] = (1024, 2048, 4096)  # squares the best-GEMM limit searches
    mmd_batches: Sequence[int] = (100, 400, 1600)
    serving_batches: Sequence[int] = (1, 256)
    serving_runs: int = 5
    data_dir: str = ""
    strategy: str = "auto"
    input_dir: str = ""  # a folder of images to stream at 64x64 instead of Fashion-MNIST
    cache_dir: str = ""  # with input_dir: read the decoded copy (--cache_dir) instead of decoding
    profile_steps: int = 0  # steps traced by TF's profiler for the per-op profile (0: none)


QUICK = dict(width_divisors=(32,), batch_size=8, windows=2, window_steps=2, matmul_size=256,
             matmul_runs=2, limit_sizes=(64, 128), mmd_batches=(16, 64), serving_batches=(1, 8),
             serving_runs=2,
             profile_steps=1)


# ----------------------------------------------------------------------------- the limit


@dataclasses.dataclass(frozen=True)
class Gemm:
    """One GEMM [m, k] x [k, n] through one of the matmul ops TF offers (`path`)."""
    m: int
    k: int
    n: int
    path: str = "matmul"  # matmul | matmul_transposed (B stored [n, k]) | batch_matmul

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n

    def __str__(self):
        return f"{self.path} {self.m}x{self.k}x{self.n}"


GEMM_PATHS = ("matmul", "matmul_transposed", "batch_matmul")


def limit_candidates(sizes: Sequence[int], batch: int) -> tuple:
    """The GEMMs the limit is the best of: squares of each size through every path, and two
    batch-shaped ones (a conv as a GEMM over batch x 8x8 positions, a dense layer at `batch`)."""
    squares = tuple(Gemm(s, s, s, path) for s in sizes for path in GEMM_PATHS)
    top = max(sizes)
    return squares + (Gemm(batch * 64, top // 2, top // 8), Gemm(batch, top, top))


def _gemm_operands(gemm: Gemm, dtype: str):
    a = tf.cast(tf.random.stateless_normal([gemm.m, gemm.k], seed=[1, 2]), dtype)
    shape_b = [gemm.n, gemm.k] if gemm.path == "matmul_transposed" else [gemm.k, gemm.n]
    b = tf.cast(tf.random.stateless_normal(shape_b, seed=[3, 4]), dtype)
    if gemm.path == "batch_matmul":  # BatchMatMulV2 over 2 halves of the rows
        a, b = tf.reshape(a, [2, gemm.m // 2, gemm.k]), tf.stack([b, b])
    return a, b


def gemm_flops_per_second(gemm: Gemm, runs: int, dtype: str = "float32") -> float:
    """Median FLOP/s of `gemm` in `dtype` (2 m k n FLOPs per call)."""
    if gemm.path not in GEMM_PATHS or (gemm.path == "batch_matmul" and gemm.m % 2):
        raise ValueError(f"No GEMM path {gemm}: paths are {', '.join(GEMM_PATHS)} "
                         "(batch_matmul needs an even m).")
    a, b = _gemm_operands(gemm, dtype)
    transpose_b = gemm.path == "matmul_transposed"
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.cast(
        tf.linalg.matmul(a, b, transpose_b=transpose_b)[..., :1, :1], tf.float32)))
    matmul(a, b).numpy()  # warm-up: trace, allocate
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return gemm.flops / statistics.median(times)


def matmul_flops_per_second(size: int, runs: int, dtype: str = "float32") -> float:
    """Median FLOP/s of a [size, size] x [size, size] tf.matmul in `dtype`: the reference the
    benchmark's figures before the best-GEMM limit were fractions of."""
    return gemm_flops_per_second(Gemm(size, size, size), runs, dtype)


def find_limit(candidates: Sequence[Gemm], runs: int, dtype: str = "float32"):
    """(the fastest GEMM of `candidates`, {str(gemm): FLOP/s}) in this process."""
    rates = {gemm: gemm_flops_per_second(gemm, runs, dtype) for gemm in candidates}
    best = max(rates, key=rates.get)
    return best, {str(gemm): rate for gemm, rate in rates.items()}


# The conv layers' classes: Keras's, and wae_tf.perf.fast_layers' tuned ones (transposed:
# *Transpose).
_CONV_KINDS = ("Conv2D", "TunedConv2D", "Conv2DTranspose", "TunedConv2DTranspose")


def layer_forward_flops(model) -> Dict[str, int]:
    """Forward FLOPs per example of each conv (Conv2D, TunedConv2D), transposed conv
    (Conv2DTranspose, TunedConv2DTranspose) and Dense layer (2 per MAC).

    Conv2D: output positions x k*k*C_in*C_out; Conv2DTranspose: input positions x the same
    (every input pixel scatters a k x k x C_out patch); Dense: C_in*C_out.
    """
    flops = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in _CONV_KINDS + ("Dense",):
            continue
        kernel = int(np.prod(layer.kernel.shape))
        if kind == "Dense":
            positions = 1
        elif kind.endswith("Transpose"):
            positions = np.prod(layer.input.shape[1:3])
        else:
            positions = np.prod(layer.output.shape[1:3])
        flops[f"{model.name}/{layer.name}"] = int(2 * positions * kernel)
    return flops


def analytic_step_flops(state: step_lib.TrainState) -> Dict[str, float]:
    """FLOPs per image of one training step: 3x the forward FLOPs of encoder and decoder
    (forward, gradient of the input, gradient of the weights), plus ~8x the discriminator's
    (its update: 2 forward passes with both gradients; the encoder's loss: 1 with the input's)."""
    ae = sum(layer_forward_flops(state.encoder).values())
    ae += sum(layer_forward_flops(state.decoder).values())
    disc = sum(layer_forward_flops(state.discriminator).values()) if state.discriminator else 0
    return {"forward": float(ae), "step": float(3 * ae + 8 * disc)}


def op_flops(op) -> int:
    """FLOPs of one conv or matmul op (2 per multiply-add, as tf.compat.v1.profiler counts them)
    from its static shapes; 0 for other ops and for unknown shapes. BatchMatMulV2 is the
    Winograd forms' GEMM (wae_tf.perf.winograd): its products, fewer than the direct conv's."""
    if op.type not in _COUNTED_OPS:
        return 0
    if op.type in ("MatMul", "BatchMatMulV2"):
        a, out = op.inputs[0].shape, op.outputs[0].shape
        transposed = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
        if not (a.is_fully_defined() and out.is_fully_defined()):
            return 0
        return 2 * out.num_elements() * a[-2 if transposed else -1]
    # Conv2D (input, filter) -> out; the gradients: (sizes, filter, dy), (input, sizes, dy).
    dy = op.outputs[0].shape if op.type == "Conv2D" else op.inputs[2].shape
    kernel = op.outputs[0].shape if op.type == "Conv2DBackpropFilter" else op.inputs[1].shape
    if not (dy.is_fully_defined() and kernel.is_fully_defined()):
        return 0
    return 2 * dy.num_elements() * kernel[:3].num_elements()


def profiled_step_flops(train_fn, iterator, global_batch: int) -> float:
    """FLOPs per image of the conv and matmul ops of the traced training function, counted
    from their shapes (op_flops; tf.compat.v1.profiler counts nothing once the graph holds a
    BatchMatMulV2). Its graph holds one step inline (with --steps_per_loop > 1 the rest run
    in a loop body).
    0 with --jit_compile: the step is then one XlaLaunch op whose insides are not counted."""
    graph = train_fn.get_concrete_function(iterator, tf.constant(1)).graph
    return sum(op_flops(op) for op in graph.get_operations()) / global_batch


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


def benchmark_training(config: Config, train: data.ImageData, options: Options,
                       limit: Gemm) -> dict:
    """Images/s of the training loop's step (pipeline included), its fraction of the limit (the
    GEMM `limit`, re-timed before each window) and of the square --matmul_size tf.matmul."""
    strategy = cluster.create_strategy(config)
    with strategy.scope():
        state = step_lib.create_state(config, train.image_shape, 600, 1,
                                      fast_layers.training_layers(config))
    dataset = data.distribute(strategy, train, config.batch_size, config.seed)
    iterator = iter(dataset)
    train_fn = step_lib.make_train_fn(config, state, strategy)
    flops = analytic_step_flops(state)
    _run_window(train_fn, iterator, 1, config.steps_per_loop)  # trace + first step
    traces_first = train_fn.experimental_get_tracing_count()
    seconds = _run_window(train_fn, iterator, 1, config.steps_per_loop)  # second warm-up
    calls = max(1, options.window_steps // config.steps_per_loop)
    if not options.window_steps:  # about 2 s per window
        calls = max(1, int(2.0 / seconds))
    rates, fractions, limits, matmuls = [], [], [], []
    dtype = hardware.COMPUTE_DTYPES[config.mixed_precision]
    for _ in range(options.windows):
        matmuls.append(matmul_flops_per_second(options.matmul_size, options.matmul_runs, dtype))
        limits.append(max(gemm_flops_per_second(limit, options.matmul_runs, dtype), matmuls[-1]))
        # One untimed call: the matmul's 200 MB evict the step's working set from the caches
        # and the allocator, which slows the next steps.
        _run_window(train_fn, iterator, 1, config.steps_per_loop)
        seconds = _run_window(train_fn, iterator, calls, config.steps_per_loop)
        rates.append(calls * config.steps_per_loop * config.batch_size / seconds)
        fractions.append(rates[-1] * flops["step"] / limits[-1])
    step_s = config.batch_size / statistics.median(rates)
    input_s = time_input(dataset, 20)
    retraces = train_fn.experimental_get_tracing_count() - traces_first
    profile = profile_ops(state, config, lambda: _run_window(
        train_fn, iterator, 1, config.steps_per_loop), options.profile_steps,
        options.matmul_runs)
    return {
        "images_per_second": statistics.median(rates),
        "step_seconds": step_s,
        "limit_gemm": str(limit),
        "limit_flops_per_second": statistics.median(limits),
        "matmul_flops_per_second": statistics.median(matmuls),
        "matmul_dtype": dtype,
        "step_flops_per_image": flops["step"],
        "forward_flops_per_image": flops["forward"],
        "profiled_step_flops_per_image": profiled_step_flops(train_fn, iterator,
                                                             config.batch_size),
        "limit_images_per_second": statistics.median(limits) / flops["step"],
        "fraction_of_limit": statistics.median(fractions),
        "fraction_of_matmul": statistics.median(
            r * flops["step"] / m for r, m in zip(rates, matmuls)),
        "input_seconds": input_s,
        "input_share": input_s / step_s,
        "steps_per_window": calls * config.steps_per_loop,
        "traces_after_first_call": traces_first,
        "retraces": retraces,
        "conv_plans": conv_plans(state),
        "peak_rss_mb": peak_rss_mb(),
        "op_profile": profile,
        "state": state,
    }


def profile_ops(state: step_lib.TrainState, config: Config, run_step, steps: int,
                runs: int = 3) -> dict:
    """The per-op profile of `steps` training steps (wae_tf.perf.op_profile), JSON-ready: conv layer
    parts [what, seconds, FLOPs, FLOP/s of the part's own GEMM (median of `runs`)] and other op
    types [what, seconds], per step; {} if steps=0."""
    if not steps:
        return {}
    ops = op_profile.trace(run_step, steps)
    ops = {op: seconds / config.steps_per_loop for op, seconds in ops.items()}
    shapes = {**conv_layer_shapes(state.encoder, config.batch_size),
              **conv_layer_shapes(state.decoder, config.batch_size)}
    part_flops = {layer: shape.forward_flops for layer, shape in shapes.items()}
    conv_rows, other_rows = op_profile.summarize(ops, part_flops, part_gemm_rates(shapes, runs))
    return {"conv_parts": [dataclasses.astuple(r) for r in conv_rows],
            "other": [dataclasses.astuple(r)[:2] for r in other_rows]}


def conv_layer_shapes(model, batch: int) -> Dict[str, convs.LayerShape]:
    """{model/layer: convs.LayerShape at `batch`} of its SAME convs and transposed convs."""
    shapes = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in _CONV_KINDS:
            continue
        transpose = kind.endswith("Transpose")
        k, _, a, b = layer.kernel.shape  # [k, k, C_in, C_out]; transposed: [k, k, C_out, C_in]
        stride = layer.strides if isinstance(layer.strides, int) else layer.strides[0]
        shapes[f"{model.name}/{layer.name}"] = convs.LayerShape(
            transpose, batch, layer.input.shape[1], b if transpose else a,
            a if transpose else b, k, stride)
    return shapes


def part_gemm_rates(shapes: Dict[str, convs.LayerShape], runs: int):
    """{(model/layer, part): FLOP/s} of each conv part's own GEMM (LayerShape.part_gemm) timed
    alone in this process: the part's speed limit as a matmul on this machine."""
    rates, by_gemm = {}, {}
    for layer, shape in shapes.items():
        for part in convs.PARTS:
            gemm = Gemm(*shape.part_gemm(part))
            if gemm not in by_gemm:
                by_gemm[gemm] = gemm_flops_per_second(gemm, runs)
            rates[layer, part] = by_gemm[gemm]
    return rates


def conv_plans(state: step_lib.TrainState) -> Dict[str, str]:
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


def benchmark_serving(state: step_lib.TrainState, config: Config, image_shape,
                      options: Options) -> Dict[str, dict]:
    """Latency (median s per call) and images/s of the exported signatures, loaded back."""
    with tempfile.TemporaryDirectory() as base:
        path = saved_model.export_saved_model(state.encoder, state.decoder, config, image_shape,
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
                  # Timed in this process: its figures never rest on another's timings.
                  conv_plan_cache="", **folder).validate()


def run(options: Options) -> dict:
    """Every measurement of the benchmark as a JSON-ready dict."""
    results = {"options": dataclasses.asdict(options), "training": {}, "serving": {},
               "cpu": hardware.cpu_isa()}
    train, source = load_train_data(benchmark_config(options, 1, "mmd"))
    results["data"] = source
    dtype = hardware.COMPUTE_DTYPES[options.mixed_precision]
    hardware.warn_if_slow_mixed_precision(options.mixed_precision)
    limit, results["gemm_flops_per_second"] = find_limit(
        limit_candidates(options.limit_sizes, options.batch_size), options.matmul_runs, dtype)
    logging.info("The limit: %s in %s at %.1f GFLOP/s (%s)", limit, dtype,
                 results["gemm_flops_per_second"][str(limit)] / 1e9, results["cpu"])
    for width in options.width_divisors:
        for regularizer in options.regularizers:
            config = benchmark_config(options, width, regularizer)
            measured = benchmark_training(config, train, options, limit)
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
    gemms = results["gemm_flops_per_second"]
    best = max(gemms, key=gemms.get)
    lines = [f"data: {results['data']}; machine load: {machine_load()}",
             f"CPU: {results['cpu']}",
             f"limit: the best of {len(gemms)} GEMMs, {best} at {gemms[best] / 1e9:.1f} GFLOP/s "
             "(re-timed before each window: 'limit GF/s'); 'mm frac' is the fraction of the "
             f"{results['options']['matmul_size']} square tf.matmul ('mm GF/s')",
             f"{'run':10} {'img/s':>8} {'limit':>8} {'frac':>6} {'mm frac':>7} {'step s':>8} "
             f"{'input':>7} {'GF/img':>7} {'prof GF':>7} {'limit GF/s':>10} {'mm GF/s':>8} "
             f"{'retrace':>7}"]
    for key, r in results["training"].items():
        lines.append(f"{key:10} {r['images_per_second']:8.1f} {r['limit_images_per_second']:8.1f} "
                     f"{r['fraction_of_limit']:6.1%} {r['fraction_of_matmul']:7.1%} "
                     f"{r['step_seconds']:8.4f} "
                     f"{r['input_share']:7.2%} {r['step_flops_per_image'] / 1e9:7.3f} "
                     f"{r['profiled_step_flops_per_image'] / 1e9:7.3f} "
                     f"{r['limit_flops_per_second'] / 1e9:10.1f} "
                     f"{r['matmul_flops_per_second'] / 1e9:8.1f} {r['retraces']:7d}"
                     + ("" if r["matmul_dtype"] == "float32" else f"  ({r['matmul_dtype']})"))
        tuned = [f"{name.split('/')[1]} ({plan})" for name, plan in r["conv_plans"].items()
                 if plan != str(convs.ALL_NATIVE)]
        lines.append(f"  {'':8} parts not on TF's kernels: {', '.join(tuned) or 'none'}; "
                     f"peak RSS {r['peak_rss_mb']:.0f} MB")
        if r["op_profile"]:
            lines.append(op_profile.format_profile(
                [op_profile.Row(*row) for row in r["op_profile"]["conv_parts"]],
                [op_profile.Row(*row) for row in r["op_profile"]["other"]],
                r["step_seconds"], r["limit_flops_per_second"]))
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
