"""The paper's comparison: train VAEs, WAE-MMD, WAE-GAN and WAE-SWD alike, evaluate, tabulate.

    python -m wae_tf.compare --workdir_root=runs/compare --train_seeds=0,1,2

Each run trains in <workdir_root>/<name>-seed<k> from flags/compare_<name>.cfg with --seed=k
(resuming from its checkpoints; a finished run is skipped), is evaluated by
wae_tf.evaluation.evaluator (skipped if its eval/metrics.json already has the requested sample
count and seed), and the seeds of a model make one row (mean ± std) of <workdir_root>/compare.md;
WAE-MMD's fitted latent sampler gets a row too. Wall times are those this script measured (summed
over resumes).
"""

import os
import time
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from absl import flags, logging

from wae_tf import cli, fileio, loop, visualize
from wae_tf import config as config_lib
from wae_tf.evaluation import evaluator

RUNS = (("vae", "VAE"), ("vae_lambda01", "VAE (λ=0.1)"), ("wae_mmd", "WAE-MMD"),
        ("wae_gan", "WAE-GAN"), ("wae_swd", "WAE-SWD"))
TIMING_FILE = "compare_timing.json"


def flagfile_path(name: str) -> str:
    return os.path.join(cli.flagfiles_dir(), f"compare_{name}.cfg")


def parse_flagfile(path: str) -> config_lib.Config:
    """The validated Config of one flagfile (nested `--flagfile=flags/...` paths are read from
    the flagfiles' parent directory: the checkout, or the installed package)."""
    values = flags.FlagValues()
    cli.define_config_flags(values)
    cwd = os.getcwd()
    os.chdir(os.path.dirname(cli.flagfiles_dir()))
    try:
        values(["compare", f"--flagfile={path}"])
    finally:
        os.chdir(cwd)
    return cli.config_from_flags(values)


def _read_json(path: str) -> dict:
    """The JSON file at `path`, or {} if there is none yet."""
    return fileio.read_json(path) if tf.io.gfile.exists(path) else {}


def train_run(config: config_lib.Config, workdir: str, data_override=None) -> dict:
    """Train (or resume) one run unless it finished the full budget (results.json, and all else
    it keeps, loop.missing_outputs); returns the timing record {train_wall_time_s, steps}."""
    timing_path = os.path.join(workdir, TIMING_FILE)
    timing = _read_json(timing_path) or {"train_wall_time_s": 0.0, "steps": 0}
    done = _read_json(os.path.join(workdir, "results.json")).get("step", -1)
    if done >= config.train_steps and not loop.missing_outputs(config, workdir, done):
        logging.info("%s: trained (%d steps), skipping.", workdir, done)
        return timing
    start = time.time()
    results = loop.train_and_evaluate(config, workdir, data_override=data_override)
    timing["train_wall_time_s"] += time.time() - start
    timing["steps"] = int(results["step"])
    fileio.write_json(timing_path, timing)
    return timing


def evaluate_run(workdir: str, num_samples: int, seed: int, classifier_dir: str,
                 **overrides) -> dict:
    """metrics.json of the run, computed unless present for this sample count and seed."""
    metrics = _read_json(os.path.join(workdir, "eval", "metrics.json"))
    trained = _read_json(os.path.join(workdir, "results.json")).get("step")
    if (metrics.get("num_samples"), metrics.get("seed"), metrics.get("step")) == (
            num_samples, seed, trained):
        logging.info("%s: evaluated, skipping.", workdir)
        return metrics
    return evaluator.evaluate_workdir(workdir, num_samples=num_samples, seed=seed,
                                       classifier_dir=classifier_dir, **overrides)


def _value(metrics: dict, key: str) -> float:
    return float(metrics[key]["value"])


# (header, metrics key, decimals) of the table's metric columns. MSE per pixel is the
# reconstruction column: comparable across likelihoods (the Bernoulli VAE's own cost is not).
COLUMNS = (("FID", "fid", 2), ("precision", "precision", 3), ("recall", "recall", 3),
           ("test MSE/pixel", "test_mse_per_pixel", 4),
           ("sharpness samples", "sharpness_samples", 4),
           ("sharpness recon", "sharpness_reconstructions", 4),
           ("MMD(Q_Z, P_Z)", "mmd_codes_prior", 4))
HEADER = ["model", *(header for header, _, _ in COLUMNS), "train min", "eval s", "steps", "seeds"]
# Keys the fitted latent sampler's row takes from its own samples instead.
_FITTED = {"fid": "fid_fitted_sampler", "precision": "precision_fitted_sampler",
           "recall": "recall_fitted_sampler"}


def _mean_std(values: List[float], decimals: int) -> str:
    """'m' for one value, 'm ± s' (sample std) for several."""
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{np.mean(values):.{decimals}f} ± {np.std(values, ddof=1):.{decimals}f}"


def table_row(label: str, runs: List[Tuple[dict, dict]], fitted: bool = False) -> List[str]:
    """One markdown row over the seeds' (metrics, timing): mean ± std of each column; with
    `fitted`, the sample metrics of the fitted latent sampler. The training time includes the
    run's own end-of-training test pass, sampler fit and export."""
    key = lambda k: _FITTED.get(k, k) if fitted else k  # noqa: E731
    cells = [_mean_std([_value(m, key(k)) for m, _ in runs], d) for _, k, d in COLUMNS]
    minutes = [t.get("train_wall_time_s", float("nan")) / 60 for _, t in runs]
    eval_s = [m.get("eval_wall_time_s", float("nan")) for m, _ in runs]
    steps = sorted({str(m.get("step", t.get("steps", "?"))) for m, t in runs})
    return [label, *cells, f"{np.mean(minutes):.1f}", f"{np.mean(eval_s):.0f}", "/".join(steps),
            str(len(runs))]


def markdown_table(rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def describe(results: Dict[str, List[Tuple[dict, dict]]]) -> str:
    """The table (a row per model, mean ± std over its training seeds; WAE-MMD's fitted latent
    sampler in a row of its own) plus the counts, seeds and classifier accuracy behind it."""
    rows = []
    for name, label in RUNS:
        if name in results:
            rows.append(table_row(label, results[name]))
            if name == "wae_mmd" and all(_FITTED["fid"] in m for m, _ in results[name]):
                rows.append(table_row(f"{label} + fitted sampler", results[name], fitted=True))
    any_metrics = next(iter(results.values()))[0][0]
    fid = any_metrics["fid"]
    notes = (f"\nMean ± sample std over training seeds. FID, precision "
             f"(k={any_metrics['precision']['k']}) and recall: "
             f"{fid['num_samples']} samples vs {fid['num_test_images']} test images in "
             f"the feature space ({fid['feature_dim']}-d) of the classifier "
             f"(test accuracy {_value(any_metrics, 'classifier_test_accuracy'):.4f}); "
             f"evaluation seed {any_metrics['seed']}. Test MSE over "
             f"{any_metrics['test_recon_cost']['num_images']} test images. Sharpness: mean "
             "variance of the 3x3 Laplacian (test images: "
             f"{_value(any_metrics, 'sharpness_test_images'):.4f}). MMD over sampled codes for "
             "Gaussian encoders.\n")
    return markdown_table(rows) + notes


def run_dir(workdir_root: str, name: str, train_seed: int) -> str:
    return os.path.join(workdir_root, f"{name}-seed{train_seed}")


def run_comparison(workdir_root: str, num_samples: int, seed: int, classifier_dir: str,
                   names=None, train_seeds=(0,)) -> str:
    """Train and evaluate every run at every training seed (resumable, in
    <workdir_root>/<name>-seed<k>); write and return <workdir_root>/compare.md."""
    names = names or [name for name, _ in RUNS]
    configs = {name: parse_flagfile(flagfile_path(name)) for name in names}
    runs = [(name, k) for k in train_seeds for name in names]  # every model once per seed first
    timings = {}
    for name, k in runs:  # all trainings first: a failing evaluation does not cost a training
        timings[name, k] = train_run(configs[name].replace(seed=int(k)),
                                     run_dir(workdir_root, name, k))
    results = {}
    for name, k in runs:
        metrics = evaluate_run(run_dir(workdir_root, name, k), num_samples, seed, classifier_dir)
        results.setdefault(name, []).append((metrics, timings[name, k]))
    text = describe(results)
    with tf.io.gfile.GFile(os.path.join(workdir_root, "compare.md"), "w") as f:
        f.write(text)
    write_figures(workdir_root, names, train_seeds[0])
    return text


def write_figures(workdir_root: str, names, train_seed: int) -> None:
    """compare_samples.png (each model's samples.png at one training seed, in RUNS order, then
    WAE-MMD's fitted sampler's) and compare_interpolations.png (VAE (λ=0.1), WAE-MMD)."""
    def eval_png(name, figure):
        return os.path.join(run_dir(workdir_root, name, train_seed), "eval", figure)
    samples = [eval_png(n, "samples.png") for n, _ in RUNS if n in names]
    if "wae_mmd" in names:
        samples.append(eval_png("wae_mmd", "samples_fitted.png"))
    interpolations = [eval_png(n, "interpolations.png") for n in ("vae_lambda01", "wae_mmd")
                      if n in names]
    for out, paths in (("compare_samples.png", samples),
                       ("compare_interpolations.png", interpolations)):
        found = [visualize.read_png(p) for p in paths if tf.io.gfile.exists(p)]
        if found:
            visualize.save_png(os.path.join(workdir_root, out), visualize.hstack(found))
