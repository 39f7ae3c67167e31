"""The paper's comparison: train VAEs, WAE-MMD, WAE-GAN and WAE-SWD alike, evaluate, tabulate.

    python -m wae_tf.compare --workdir_root=runs/compare

Each run trains in <workdir_root>/<name> from flags/compare_<name>.cfg (resuming from its
checkpoints; a finished run is skipped), is evaluated by wae_tf.evaluation (skipped if its
eval/metrics.json already has the requested sample count and seed) and lands in one row of
<workdir_root>/compare.md. Wall times are those this script measured (summed over resumes).
"""

import os
import time
from typing import Dict, List, Tuple

import tensorflow as tf
from absl import flags
from absl import logging

from wae_tf import cli
from wae_tf import config as config_lib
from wae_tf import evaluation
from wae_tf import fileio
from wae_tf import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = (("vae", "VAE"), ("vae_lambda01", "VAE (λ=0.1)"), ("wae_mmd", "WAE-MMD"),
        ("wae_gan", "WAE-GAN"), ("wae_swd", "WAE-SWD"))
TIMING_FILE = "compare_timing.json"


def flagfile_path(name: str) -> str:
    return os.path.join(REPO, "flags", f"compare_{name}.cfg")


def parse_flagfile(path: str) -> config_lib.Config:
    """The validated Config of one flagfile (nested --flagfile paths are relative to the repo)."""
    values = flags.FlagValues()
    cli.define_config_flags(values)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        values(["compare", f"--flagfile={path}"])
    finally:
        os.chdir(cwd)
    return cli.config_from_flags(values)


def _read_json(path: str) -> dict:
    """The JSON file at `path`, or {} if there is none yet."""
    return fileio.read_json(path) if tf.io.gfile.exists(path) else {}


def train_run(config: config_lib.Config, workdir: str, data_override=None) -> dict:
    """Train (or resume) one run unless its results.json reports the full budget; returns the
    timing record {train_wall_time_s, steps}."""
    timing_path = os.path.join(workdir, TIMING_FILE)
    timing = _read_json(timing_path) or {"train_wall_time_s": 0.0, "steps": 0}
    done = _read_json(os.path.join(workdir, "results.json")).get("step", -1)
    if done >= config.train_steps:
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
    return evaluation.evaluate_workdir(workdir, num_samples=num_samples, seed=seed,
                                       classifier_dir=classifier_dir, **overrides)


def _value(metrics: dict, key: str) -> float:
    return float(metrics[key]["value"])


def table_row(label: str, metrics: dict, timing: dict) -> List[str]:
    """One markdown row: FID, precision, recall, test recon, sharpness, MMD, times, steps.

    The training time includes the run's own end-of-training test pass and export."""
    return [label, f"{_value(metrics, 'fid'):.2f}", f"{_value(metrics, 'precision'):.3f}",
            f"{_value(metrics, 'recall'):.3f}", f"{_value(metrics, 'test_recon_cost'):.3f}",
            f"{_value(metrics, 'test_mse_per_pixel'):.4f}",
            f"{_value(metrics, 'sharpness_samples'):.4f}",
            f"{_value(metrics, 'sharpness_reconstructions'):.4f}",
            f"{_value(metrics, 'mmd_codes_prior'):.4f}",
            f"{timing.get('train_wall_time_s', float('nan')) / 60:.1f}",
            f"{metrics.get('eval_wall_time_s', float('nan')):.0f}",
            str(metrics.get("step", timing.get("steps", "?")))]


HEADER = ["model", "FID", "precision", "recall", "test recon (0.05·‖x−y‖²)", "MSE/pixel",
          "sharpness samples", "sharpness recon", "MMD(Q_Z, P_Z)", "train min", "eval s", "steps"]


def markdown_table(rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def describe(results: Dict[str, Tuple[dict, dict]]) -> str:
    """The table plus the counts, seeds and classifier accuracy it was measured with."""
    rows = [table_row(label, *results[name]) for name, label in RUNS if name in results]
    any_metrics = next(iter(results.values()))[0]
    fid = any_metrics["fid"]
    notes = (f"\nFID, precision (k={any_metrics['precision']['k']}) and recall: "
             f"{fid['num_samples']} prior samples vs {fid['num_test_images']} test images in "
             f"the feature space ({fid['feature_dim']}-d) of the classifier "
             f"(test accuracy {_value(any_metrics, 'classifier_test_accuracy'):.4f}); "
             f"evaluation seed {any_metrics['seed']}. Test recon and MSE over "
             f"{any_metrics['test_recon_cost']['num_images']} test images. Sharpness: mean "
             "variance of the 3x3 Laplacian (test images: "
             f"{_value(any_metrics, 'sharpness_test_images'):.4f}).\n")
    return markdown_table(rows) + notes


def run_comparison(workdir_root: str, num_samples: int, seed: int, classifier_dir: str,
                   names=None) -> str:
    """Train and evaluate every run (resumable); write and return <workdir_root>/compare.md."""
    names = names or [name for name, _ in RUNS]
    configs = {name: parse_flagfile(flagfile_path(name)) for name in names}
    timings = {}
    for name in names:  # all trainings first: a failing evaluation does not cost a training
        timings[name] = train_run(configs[name], os.path.join(workdir_root, name))
    results = {}
    for name in names:
        metrics = evaluate_run(os.path.join(workdir_root, name), num_samples, seed,
                               classifier_dir)
        results[name] = (metrics, timings[name])
    text = describe(results)
    with tf.io.gfile.GFile(os.path.join(workdir_root, "compare.md"), "w") as f:
        f.write(text)
    return text
