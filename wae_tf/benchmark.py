"""Entry point: python -m wae_tf.benchmark [--width_divisors=1,4] [--regularizers=mmd,gan]
[--quick] times training and serving against this machine's matmul speed
(wae_tf.tools.benchmarking); --startup times the start of training (wae_tf.tools.startup)."""

import json
import sys

from absl import app, flags

from wae_tf import cli
from wae_tf.config import CHOICES


def define_flags() -> None:
    """The benchmark's flags."""
    flags.DEFINE_list("width_divisors", ["1", "4"], "Network widths to measure (paper = 1).")
    flags.DEFINE_list("regularizers", ["mmd", "gan"], "Regularisers to measure.")
    flags.DEFINE_integer("batch_size", 100, "Training batch size.")
    flags.DEFINE_integer("windows", 5, "Timed windows per run; figures are their medians.")
    flags.DEFINE_integer("window_steps", 0, "Training steps per window; 0 = about 2 s worth.")
    flags.DEFINE_integer("steps_per_loop", 1, "Training steps per tf.function call.")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step.")
    flags.DEFINE_enum("mixed_precision", "none", CHOICES["mixed_precision"],
                      "16-bit layer compute (see Config.mixed_precision).")
    flags.DEFINE_enum("conv_impl", "auto", CHOICES["conv_impl"],
                      "Conv parts as TF's kernels, matmuls or timed (see Config.conv_impl).")
    flags.DEFINE_integer("matmul_size", 4096, "Side of the square tf.matmul the 'mm frac' column "
                         "is a fraction of (the limit before the best-GEMM search).")
    flags.DEFINE_list("limit_sizes", ["1024", "2048", "4096"], "Square GEMM sizes the limit "
                      "searches, through each of TF's matmul ops (plus two batch-shaped GEMMs).")
    flags.DEFINE_list("mmd_batches", ["100", "400", "1600"], "Batch sizes of the MMD timing "
                      "(empty = skip).")
    flags.DEFINE_list("serving_batches", ["1", "256"], "Batch sizes of the SavedModel timing.")
    flags.DEFINE_integer("serving_runs", 5, "Timed calls per signature and batch; 0 = skip.")
    cli.DEFINE_path("data_dir", "", "Fashion-MNIST IDX directory (default: the Debian one).")
    flags.DEFINE_integer("inter_op_threads", 0, "tf.config inter-op threads (0 = TF's default).")
    flags.DEFINE_integer("intra_op_threads", 0, "tf.config intra-op threads (0 = TF's default).")
    cli.DEFINE_path("input_dir", "", "Stream this folder of images at 64x64 (as "
                    "--dataset=folder --in_memory=false) instead of Fashion-MNIST.")
    cli.DEFINE_path("cache_dir", "", "With --input_dir: read the decoded copy in this "
                    "directory (written first if missing) instead of decoding every step.")
    flags.DEFINE_integer("write_images", 0, "First write this many synthetic 64x64 JPEGs into "
                         "--input_dir (to measure streaming at scale), then measure.")
    flags.DEFINE_integer("profile_steps", 0, "Trace this many training steps with TF's profiler "
                         "and print where the time goes: each conv layer part against the "
                         "limit, the other op types (wae_tf.perf.op_profile). 0 = no profile.")
    flags.DEFINE_bool("quick", False, "A tiny network and few steps: checks that everything runs.")
    flags.DEFINE_bool("startup", False, "Instead: time to first step of the main command and of "
                      "a 64x64 folder at width 4 (--input_dir, else synthetic images) with an "
                      "empty conv plan cache, and the steady speed after (wae_tf.tools.startup).")
    for name in ("width_divisors", "limit_sizes", "mmd_batches", "serving_batches"):
        cli.validate_int_list(name)
    flags.register_validator("regularizers", lambda values: set(values) <= set(
        CHOICES["regularizer"]), f"--regularizers takes {', '.join(CHOICES['regularizer'])}")


def options_from_flags():
    """benchmarking.Options of the parsed flags (--quick: benchmarking.QUICK's values)."""
    from wae_tf.tools import benchmarking  # pylint: disable=import-outside-toplevel; after flag parsing
    values = dict(width_divisors=tuple(int(w) for w in flags.FLAGS.width_divisors),
                  regularizers=tuple(flags.FLAGS.regularizers),
                  batch_size=flags.FLAGS.batch_size, windows=flags.FLAGS.windows,
                  window_steps=flags.FLAGS.window_steps,
                  steps_per_loop=flags.FLAGS.steps_per_loop, jit_compile=flags.FLAGS.jit_compile,
                  mixed_precision=flags.FLAGS.mixed_precision,
                  conv_impl=flags.FLAGS.conv_impl, matmul_size=flags.FLAGS.matmul_size,
                  limit_sizes=tuple(int(s) for s in flags.FLAGS.limit_sizes),
                  mmd_batches=tuple(int(b) for b in flags.FLAGS.mmd_batches),
                  serving_batches=tuple(int(b) for b in flags.FLAGS.serving_batches),
                  serving_runs=flags.FLAGS.serving_runs,
                  data_dir=flags.FLAGS.data_dir, input_dir=flags.FLAGS.input_dir,
                  cache_dir=flags.FLAGS.cache_dir, profile_steps=flags.FLAGS.profile_steps)
    if flags.FLAGS.quick:
        values.update(benchmarking.QUICK)
    return benchmarking.Options(**values)


def main(argv):
    sys.exit(cli.run_reporting_user_errors(_main, argv))


def _main(argv):
    cli.check_no_arguments(argv)
    tf = cli.import_tensorflow()  # without its start-up noise, before the libraries load it
    from wae_tf.tools import benchmarking  # pylint: disable=import-outside-toplevel; after flag parsing
    tf.config.threading.set_inter_op_parallelism_threads(flags.FLAGS.inter_op_threads)
    tf.config.threading.set_intra_op_parallelism_threads(flags.FLAGS.intra_op_threads)
    if flags.FLAGS.startup:
        from wae_tf.perf import hardware  # pylint: disable=import-outside-toplevel
        from wae_tf.tools import startup  # pylint: disable=import-outside-toplevel
        print(f"CPU: {hardware.cpu_isa()}; load average {benchmarking.machine_load()}")
        print(startup.run(flags.FLAGS.input_dir))
        return
    if flags.FLAGS.write_images:
        benchmarking.write_synthetic_images(flags.FLAGS.input_dir, flags.FLAGS.write_images)
    results = benchmarking.run(options_from_flags())
    results["load_average"] = benchmarking.machine_load()
    print(benchmarking.format_table(results))
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
