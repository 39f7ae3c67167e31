"""The paper's comparisons: train a suite of runs alike, evaluate them, tabulate beside the paper.

    python -m wae_tf.compare --workdir_root=runs/compare --train_seeds=0,1,2
    python -m wae_tf.compare --suite=celeba --data_dir=DIR --train_seeds=0 --workdir_root=runs/c

A suite (SUITES) is a table of runs: a name, a flagfile of flags/ and the paper's values. Each run
trains in <workdir_root>/<name>-seed<k> from its flagfile with the command line's other flags on
top (`--data_dir`, `--train_steps`, `--width_divisor`, ...: `split_overrides`) and --seed=k
(resuming from its checkpoints; a finished run is skipped), is evaluated by
wae_tf.evaluation.evaluator (skipped while its eval/metrics.json is current: `is_current`), and the
seeds of a model make one row (mean ± std) of <workdir_root>/compare.md, the paper's values
beside the measured ones; the fitted latent sampler gets a row too. Wall times are those this
script measured (summed over resumes).

metrics.json names its feature space ("feature_space": {"name": inception | classifier | custom},
keys `fid_<space>`, `kid_<space>`, ...); one without it is the classifier's, keys `fid`, ...
"""

import dataclasses
import inspect
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import flags, logging

from wae_tf import cli, fileio, loop, visualize
from wae_tf import config as config_lib
from wae_tf.errors import ConfigError
from wae_tf.evaluation import evaluator, plots

TIMING_FILE = "compare_timing.json"
NO_VALUE = "—"


@dataclasses.dataclass(frozen=True)
class Run:
    """One model of a suite: trained from flags/<flagfile>, one table row."""
    name: str  # its workdirs' prefix and its --runs name
    label: str  # the table's row
    flagfile: str  # a file of flags/
    paper: Dict[str, float] = dataclasses.field(default_factory=dict)  # column key -> value


@dataclasses.dataclass(frozen=True)
class Suite:
    """The runs of one comparison and the paper's values they are reported beside."""
    runs: Tuple[Run, ...]
    fitted: str  # the run whose fitted latent sampler gets a row
    interpolations: Tuple[str, ...]  # the runs of compare_interpolations.png
    true_data: Dict[str, float] = dataclasses.field(default_factory=dict)  # the paper's, data
    paper_note: str = ""  # where the paper's values come from and how they were measured
    paper_space: str = "inception"  # the feature space of the paper's FIDs
    paper_pixels: str = "symmetric"  # the pixel range of the paper's sharpness


_TABLE_1 = ("The paper's values: Tolstikhin et al. (2018), Table 1 (CelebA 64x64): FID of 10,000 "
            "samples in the Inception features of Heusel et al. (2017), sharpness of samples on "
            "the [-1, 1] pixels of its code (`compute_blurriness`, whose log prints the least "
            "sharp image of a batch; ours is the mean over images); its true-data row is real "
            "images, ours the test images.")
SUITES = {
    "fashion_mnist": Suite(
        runs=(Run("vae", "VAE", "compare_vae.cfg"),
              Run("vae_lambda01", "VAE (λ=0.1)", "compare_vae_lambda01.cfg"),
              Run("wae_mmd", "WAE-MMD", "compare_wae_mmd.cfg"),
              Run("wae_gan", "WAE-GAN", "compare_wae_gan.cfg"),
              Run("wae_swd", "WAE-SWD", "compare_wae_swd.cfg")),
        fitted="wae_mmd", interpolations=("vae_lambda01", "wae_mmd")),
    "celeba": Suite(
        runs=(Run("celeba_vae", "VAE", "celeba_vae.cfg", {"fid": 63, "sharpness_samples": 3e-3}),
              Run("celeba_wae_mmd", "WAE-MMD", "celeba_wae_mmd.cfg",
                  {"fid": 55, "sharpness_samples": 6e-3}),
              Run("celeba_wae_gan", "WAE-GAN", "celeba_wae_gan.cfg",
                  {"fid": 42, "sharpness_samples": 6e-3})),
        fitted="celeba_wae_mmd", interpolations=("celeba_vae", "celeba_wae_mmd"),
        true_data={"fid": 2, "sharpness_samples": 2e-2}, paper_note=_TABLE_1),
}
DEFAULT_SUITE = "fashion_mnist"


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"--suite={name!r} is not one of {', '.join(SUITES)}.")
    return SUITES[name]


def flagfile_path(name: str, suite: str = DEFAULT_SUITE) -> str:
    """The flagfile of the run `name` of `suite`."""
    runs = {run.name: run for run in get_suite(suite).runs}
    if name not in runs:
        raise ConfigError(f"--runs: {name!r} is not a run of --suite={suite} "
                          f"({', '.join(runs)}).")
    return os.path.join(cli.flagfiles_dir(), runs[name].flagfile)


def parse_flagfile(path: str, overrides: Sequence[str] = ()) -> config_lib.Config:
    """The validated Config of one flagfile with `overrides` (["--name=value", ...]) on top (its
    includes resolved as cli.expand_flagfiles does, from any directory)."""
    try:
        return cli.config_from_args([f"--flagfile={path}", *overrides])
    except flags.Error as error:
        raise ConfigError(f"{os.path.basename(path)} with {' '.join(overrides)}: {error}") from None


# ------------------------------------------------------------------- flags passed to every run

# evaluator.evaluate_model's parameters that wae-compare sets itself, or that are not flags.
_NOT_PASSED = {"model", "output_dir", "num_samples", "seed", "classifier_dir"}


def _evaluation_parameters() -> Dict[str, object]:
    """evaluate_model's keyword parameters a flag can set: name -> default (str/int/float/bool)."""
    params = inspect.signature(evaluator.evaluate_model).parameters.values()
    return {p.name: p.default for p in params if p.name not in _NOT_PASSED
            and isinstance(p.default, (str, int, float, bool))}


def _parse_flag(arg: str, boolean_names) -> Tuple[str, str]:
    """'--name=value' -> (name, value); '--name' -> (name, 'true'); '--noname' -> (name,
    'false') for a boolean `name`."""
    if not arg.startswith("-"):
        raise ConfigError(f"Unexpected argument {arg!r}: runs take flags, --name=value.")
    name, equals, value = arg.lstrip("-").partition("=")
    if equals:
        return name, value
    if name.startswith("no") and name[2:] in boolean_names:
        return name[2:], "false"
    return name, "true"


def _coerce(value: str, default):
    if isinstance(default, bool):
        return value.lower() in ("true", "1", "yes")
    return type(default)(value)


def split_overrides(args: Sequence[str]) -> Tuple[List[str], Dict[str, object]]:
    """The command line's other flags: those of Config (training, every run's flagfile) as
    given, and those of evaluator.evaluate_model as keyword arguments; a flag may be both.
    Raises ConfigError for a flag that is neither."""
    fields = {f.name: f for f in config_lib.config_fields()}
    booleans = {name for name, f in fields.items() if f.type in (bool, "bool")}
    evaluation = _evaluation_parameters()
    booleans |= {name for name, default in evaluation.items() if isinstance(default, bool)}
    config_args, eval_kwargs = [], {}
    for arg in args:
        name, value = _parse_flag(arg, booleans)
        if name not in fields and name not in evaluation:
            raise ConfigError(f"{arg}: --{name} is neither a flag of wae-compare nor of "
                              "training (wae-train --help) or evaluation.")
        if name in fields:
            config_args.append(arg)
        if name in evaluation:
            try:
                eval_kwargs[name] = _coerce(value, evaluation[name])
            except ValueError:
                raise ConfigError(f"{arg}: not a valid value for --{name}.") from None
    return config_args, eval_kwargs


# ---------------------------------------------------------------------- training, evaluation


def _read_json(path: str) -> dict:
    """The JSON file at `path`, or {} if there is none yet."""
    return fileio.read_json(path) if tf.io.gfile.exists(path) else {}


def train_run(config: config_lib.Config, workdir: str, data_override=None) -> dict:
    """Train (or resume) one run unless it finished the full budget (results.json, and all else
    it keeps, loop.missing_outputs); returns the timing record {train_wall_time_s, steps}."""
    timing_path = os.path.join(workdir, TIMING_FILE)
    timing = _read_json(timing_path) or {"train_wall_time_s": 0.0, "steps": 0}
    done = _read_json(os.path.join(workdir, "results.json")).get("step", -1)
    if (config.train_steps and done >= config.train_steps
            and not loop.missing_outputs(config, workdir, done)):
        logging.info("%s: trained (%d steps), skipping.", workdir, done)
        return timing
    start = time.time()
    results = loop.train_and_evaluate(config, workdir, data_override=data_override)
    if int(results["step"]) != done:  # else it was finished: no training time to add
        timing["train_wall_time_s"] += time.time() - start
        timing["steps"] = int(results["step"])
        fileio.write_json(timing_path, timing)
    return timing


def feature_space(metrics: dict) -> str:
    """The feature space of FID, KID, precision and recall in `metrics` (an old metrics.json
    without "feature_space" is the classifier's)."""
    return metrics.get("feature_space", {}).get("name", "classifier")


def requested_space(fid_features: str) -> str:
    """The space `--fid_features=` names: inception, classifier, or custom (a SavedModel)."""
    return fid_features if fid_features in ("inception", "classifier") else "custom"


def is_current(metrics: dict, config: config_lib.Config, num_samples: int, seed: int,
               step, fid_features: str = "") -> bool:
    """Whether a run's metrics.json answers this comparison: the same sample count, seed and
    trained step, the requested feature space (if one is), a named space where the evaluator
    names it, and sharpness on the run's pixel range."""
    if (metrics.get("num_samples"), metrics.get("seed"), metrics.get("step")) != (
            num_samples, seed, step):
        return False
    if fid_features and feature_space(metrics) != requested_space(fid_features):
        return False
    if "feature_space" not in metrics:  # from before the keys named their feature space
        return False
    return metrics.get("sharpness_samples", {}).get("pixel_range", "unit") == config.pixel_range


def evaluate_run(workdir: str, num_samples: int, seed: int, classifier_dir: str,
                 config: Optional[config_lib.Config] = None, fid_features: str = "",
                 **overrides) -> dict:
    """metrics.json of the run, computed unless current (`is_current`); `overrides` are
    evaluate_model's keyword arguments."""
    metrics = _read_json(os.path.join(workdir, "eval", "metrics.json"))
    trained = _read_json(os.path.join(workdir, "results.json")).get("step")
    config = config or config_lib.from_dict(_read_json(os.path.join(workdir, "config.json")))
    if is_current(metrics, config, num_samples, seed, trained, fid_features):
        logging.info("%s: evaluated, skipping.", workdir)
        return metrics
    return evaluator.evaluate_workdir(workdir, num_samples=num_samples, seed=seed,
                                       classifier_dir=classifier_dir, **overrides)


# --------------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Column:
    header: str  # {space} and {pixels} are filled in from the metrics
    key: str  # in metrics.json; named by the feature space (fid_<space>) if per_space
    spec: str  # format spec of the values
    per_space: bool = False
    of_samples: bool = False  # a property of the samples: the fitted sampler's row has its own


# MSE per pixel is the reconstruction column: comparable across likelihoods (the Bernoulli
# VAE's own cost is not).
COLUMNS = (Column("FID ({space})", "fid", ".2f", per_space=True, of_samples=True),
           Column("KID ({space})", "kid", ".4f", per_space=True, of_samples=True),
           Column("precision", "precision", ".3f", per_space=True, of_samples=True),
           Column("recall", "recall", ".3f", per_space=True, of_samples=True),
           Column("test MSE/pixel", "test_mse_per_pixel", ".4f"),
           Column("sharpness samples ({pixels})", "sharpness_samples", ".2e", of_samples=True),
           Column("sharpness recon ({pixels})", "sharpness_reconstructions", ".2e"),
           Column("MMD(Q_Z, P_Z)", "mmd_codes_prior", ".4f"))
FID, PRECISION = COLUMNS[0], COLUMNS[2]
SPACE_NAMES = {"inception": "Inception", "classifier": "classifier features",
               "custom": "custom features"}
PIXELS = {"unit": "[0, 1]", "symmetric": "[-1, 1]"}


def metric_key(metrics: dict, column: Column, fitted: bool = False) -> Optional[str]:
    """The key of `column` in `metrics` (of the fitted sampler's samples with `fitted`), or None
    where the fitted sampler has no value of its own."""
    key = column.key
    if column.per_space and "feature_space" in metrics:
        key = f"{key}_{feature_space(metrics)}"
    if fitted and column.of_samples:
        return f"{key}_fitted_sampler" if column.per_space else None
    return key


def _mean_std(values: List[float], spec: str) -> str:
    """'m' for one value, 'm ± s' (sample std) for several."""
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(np.mean(values), spec)} ± {format(np.std(values, ddof=1), spec)}"


def _cell(runs: List[Tuple[dict, dict]], column: Column, fitted: bool = False) -> str:
    keys = [metric_key(m, column, fitted) for m, _ in runs]
    if any(k is None or k not in m for k, (m, _) in zip(keys, runs)):
        return NO_VALUE
    return _mean_std([float(m[k]["value"]) for k, (m, _) in zip(keys, runs)], column.spec)


def _paper_cell(value: Optional[float], column: Column) -> str:
    if value is None:
        return NO_VALUE
    return f"{value:.0e}" if column.spec.endswith("e") else f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Table:
    """The columns shown (those some run has), the paper's beside those it reports, and the
    feature space and pixel range their headers name."""
    columns: Tuple[Column, ...]
    paper_keys: frozenset
    space: str
    pixels: str
    paper_space: str
    paper_pixels: str

    def header(self) -> List[str]:
        cells = ["model"]
        for column in self.columns:
            cells.append(column.header.format(space=SPACE_NAMES.get(self.space, self.space),
                                              pixels=self.pixels))
            if column.key in self.paper_keys:
                cells.append("paper " + column.header.format(
                    space=SPACE_NAMES[self.paper_space], pixels=PIXELS[self.paper_pixels]))
        return cells + ["train min", "eval s", "steps", "seeds"]


def make_table(results: Dict[str, List[Tuple[dict, dict]]], suite: Suite) -> Table:
    """The Table of `results`; ConfigError if the runs were evaluated in different spaces."""
    every = [m for runs in results.values() for m, _ in runs]
    spaces = sorted({feature_space(m) for m in every})
    if len(spaces) > 1:
        raise ConfigError("The runs were evaluated in different feature spaces "
                          f"({', '.join(spaces)}): rerun with --fid_features=SPACE to evaluate "
                          "them in one.")
    ranges = sorted({m.get("sharpness_samples", {}).get("pixel_range", "unit") for m in every})
    columns = tuple(c for c in COLUMNS if any(metric_key(m, c) in m for m in every))
    paper = {key for run in suite.runs for key in run.paper} | set(suite.true_data)
    return Table(columns, frozenset(paper), spaces[0], " / ".join(PIXELS[r] for r in ranges),
                 suite.paper_space, suite.paper_pixels)


def table_row(label: str, runs: List[Tuple[dict, dict]], table: Table, paper: Dict[str, float],
              fitted: bool = False) -> List[str]:
    """One markdown row over the seeds' (metrics, timing): mean ± std of each column, the
    paper's value beside those it reports; with `fitted`, the sample metrics of the fitted
    latent sampler. The training time includes the run's own end-of-training test pass,
    sampler fit and export."""
    cells = [label]
    for column in table.columns:
        cells.append(_cell(runs, column, fitted))
        if column.key in table.paper_keys:
            cells.append(_paper_cell(paper.get(column.key), column))
    minutes = [t.get("train_wall_time_s", float("nan")) / 60 for _, t in runs]
    eval_s = [m.get("eval_wall_time_s", float("nan")) for m, _ in runs]
    steps = sorted({str(m.get("step", t.get("steps", "?"))) for m, t in runs})
    return cells + [f"{np.mean(minutes):.1f}", f"{np.mean(eval_s):.0f}", "/".join(steps),
                    str(len(runs))]


def true_data_row(results: Dict[str, List[Tuple[dict, dict]]], table: Table,
                  paper: Dict[str, float]) -> List[str]:
    """The test images' own sharpness, beside the paper's values for real data."""
    metrics = next(iter(results.values()))[0][0]
    cells = ["test images"]
    for column in table.columns:
        measured = metrics.get("sharpness_test_images") if column.key == "sharpness_samples" \
            else None
        cells.append(format(measured["value"], column.spec) if measured else NO_VALUE)
        if column.key in table.paper_keys:
            cells.append(_paper_cell(paper.get(column.key), column))
    return cells + [NO_VALUE] * 4


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _notes(metrics: dict, table: Table, suite: Suite) -> str:
    """The counts, seeds, feature space and scales behind the table."""
    fid = metrics.get(metric_key(metrics, FID), {})
    space = metrics.get("feature_space", {})
    dim = space.get("dim", fid.get("feature_dim", "?"))
    described = f"{SPACE_NAMES.get(table.space, table.space)} ({dim}-d"
    if "classifier_test_accuracy" in metrics:
        accuracy = float(metrics["classifier_test_accuracy"]["value"])
        described += f"; the classifier's test accuracy {accuracy:.4f}"
    k = metrics.get(metric_key(metrics, PRECISION), {}).get("k", "?")
    kid = ", KID" if any(c.key == "kid" for c in table.columns) else ""
    text = (f"\nMean ± sample std over training seeds. FID{kid}, precision (k={k}) and recall: "
            f"{fid.get('num_samples', metrics.get('num_samples'))} samples vs "
            f"{fid.get('num_test_images', '?')} test images in {described}); "
            f"evaluation seed {metrics.get('seed')}. Test MSE per [0, 1] pixel over "
            f"{metrics.get('test_recon_cost', {}).get('num_images', '?')} test images. "
            "Sharpness: mean over images of the variance of the 3x3 Laplacian of the grayscale "
            f"image, on {table.pixels} pixels (the networks' range, as the paper's code). MMD "
            "over sampled codes for Gaussian encoders.\n")
    if suite.paper_note:
        text += f"\n{suite.paper_note}"
        if table.space != "inception":
            text += (f" The measured FIDs here are in {SPACE_NAMES.get(table.space, table.space)}"
                     ": they do not compare with the paper's (--fid_features=inception does).")
        text += "\n"
    return text


def describe(results: Dict[str, List[Tuple[dict, dict]]], suite_name: str = DEFAULT_SUITE) -> str:
    """The table (a row per model, mean ± std over its training seeds, the paper's values
    beside; the fitted latent sampler and the suite's true-data values in rows of their own)
    plus the counts, seeds and feature space behind it."""
    suite = get_suite(suite_name)
    table = make_table(results, suite)
    rows = []
    for run in suite.runs:
        if run.name in results:
            rows.append(table_row(run.label, results[run.name], table, run.paper))
            if run.name == suite.fitted and all(
                    metric_key(m, FID, fitted=True) in m for m, _ in results[run.name]):
                rows.append(table_row(f"{run.label} + fitted sampler", results[run.name], table,
                                      {}, fitted=True))
    if suite.true_data:
        rows.append(true_data_row(results, table, suite.true_data))
    any_metrics = next(iter(results.values()))[0][0]
    return markdown_table(table.header(), rows) + _notes(any_metrics, table, suite)


# ------------------------------------------------------------------------------ the comparison


def run_dir(workdir_root: str, name: str, train_seed: int) -> str:
    return os.path.join(workdir_root, f"{name}-seed{train_seed}")


def run_comparison(workdir_root: str, num_samples: int, seed: int, classifier_dir: str,
                   names=None, train_seeds=(0,), suite: str = DEFAULT_SUITE,
                   overrides: Sequence[str] = ()) -> str:
    """Train and evaluate every run of `suite` at every training seed (resumable, in
    <workdir_root>/<name>-seed<k>), `overrides` (["--name=value", ...]) passed to every run's
    training and evaluation (split_overrides); write and return <workdir_root>/compare.md."""
    names = names or [run.name for run in get_suite(suite).runs]
    config_args, eval_kwargs = split_overrides(overrides)
    fid_features = dict(_parse_flag(a, ()) for a in overrides).get("fid_features", "")
    configs = {name: parse_flagfile(flagfile_path(name, suite), config_args) for name in names}
    runs = [(name, k) for k in train_seeds for name in names]  # every model once per seed first
    timings = {}
    for name, k in runs:  # all trainings first: a failing evaluation does not cost a training
        timings[name, k] = train_run(configs[name].replace(seed=int(k)),
                                     run_dir(workdir_root, name, k))
    results = {}
    for name, k in runs:
        metrics = evaluate_run(run_dir(workdir_root, name, k), num_samples, seed, classifier_dir,
                               configs[name], fid_features, **eval_kwargs)
        results.setdefault(name, []).append((metrics, timings[name, k]))
    text = describe(results, suite)
    with tf.io.gfile.GFile(os.path.join(workdir_root, "compare.md"), "w") as f:
        f.write(text)
    write_figures(workdir_root, names, train_seeds[0], suite)
    return text


def write_figures(workdir_root: str, names, train_seed: int, suite: str = DEFAULT_SUITE) -> None:
    """compare_samples.png (each model's samples.png at one training seed, in the suite's order,
    then its fitted sampler's) and compare_interpolations.png (the suite's interpolations), each
    panel under its model's name."""
    spec = get_suite(suite)
    labels = {run.name: run.label for run in spec.runs}

    def eval_png(name, figure):
        return os.path.join(run_dir(workdir_root, name, train_seed), "eval", figure)
    samples = [(labels[run.name], eval_png(run.name, "samples.png"))
               for run in spec.runs if run.name in names]
    if spec.fitted in names:
        samples.append((f"{labels[spec.fitted]} + fitted sampler",
                        eval_png(spec.fitted, "samples_fitted.png")))
    interpolations = [(labels[n], eval_png(n, "interpolations.png"))
                      for n in spec.interpolations if n in names]
    for out, panels, title in (
            ("compare_samples.png", samples, "Samples"),
            ("compare_interpolations.png", interpolations, "Interpolations")):
        found = [(label, visualize.read_png(p)) for label, p in panels if tf.io.gfile.exists(p)]
        if found:
            figure = plots.panels_figure(
                [image for _, image in found], [label for label, _ in found],
                f"{title} of the {suite} comparison's models (training seed {train_seed})")
            plots.save_png(figure, os.path.join(workdir_root, out))
