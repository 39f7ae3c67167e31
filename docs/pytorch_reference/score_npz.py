"""Scores the outputs of wae_mmd_torch.py --out=FILE.npz with wae_tf's own metrics; one JSON line.

Run in wae_tf's venv from the repository's root. The metrics are those of `python -m
wae_tf.evaluate`, computed by the same functions of wae_tf.evaluation on the same data: test
reconstruction cost and MSE per pixel of the 10,000 test images (in file order); FID, precision and
recall (k = 3) of the decoded prior samples against the test images in the feature space of
wae_tf's cached Fashion-MNIST classifier (~/.cache/wae_tf/classifier/fashion_mnist, trained there
first if absent); MMD between the test codes and prior samples; Laplacian sharpness. The prior
samples were drawn by torch, so they differ from wae_tf's draws for the same --seed.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from wae_tf import data, evaluation  # noqa: E402
from wae_tf.config import Config, DEFAULT_FASHION_MNIST_DIR  # noqa: E402
from wae_tf.errors import ConfigError  # noqa: E402


def score(path: str, data_dir: str, classifier_dir: str, seed: int) -> dict:
    """wae_tf's evaluation metrics of the arrays in `path` (see the module docstring)."""
    arrays = np.load(path)
    config = Config(dataset="fashion_mnist", data_dir=data_dir, z_dim=int(arrays["z_dim"]),
                    width_divisor=int(arrays["width_divisor"]))
    recon, samples = arrays["recon"], arrays["samples"]  # [n, 28, 28, 1] float32 in [0, 1]
    codes = arrays["codes"]  # [n, z_dim]: one array, so the MMD is labelled deterministic codes
    test_images, _ = evaluation.select_test(data.load_split(config, "test"), len(recon), seed)
    if recon.shape != test_images.shape:
        raise ConfigError(f"{path} holds reconstructions {recon.shape}; the test split is "
                          f"{test_images.shape}: save all test images with wae_mmd_torch.py.")
    # pylint: disable=protected-access; the same helpers as evaluation.compute_metrics
    classifier = evaluation._classifier_for(config, classifier_dir)
    outputs = dict(codes=codes, q_codes=codes, recon=recon, samples=samples)
    results = dict(source=os.path.abspath(path), implementation=f"torch {arrays['torch']}",
                   steps=int(arrays["steps"]), width_divisor=config.width_divisor,
                   init_std=float(arrays["init_std"]), train_seed=int(arrays["seed"]),
                   num_samples=int(len(samples)), seed=seed,
                   test_mse_per_pixel_torch=float(arrays["test_mse_per_pixel"]))
    results.update(evaluation._reconstruction_metrics(config, test_images, recon))
    results.update(evaluation._feature_metrics(classifier, test_images, samples, seed))
    results.update(evaluation._latent_and_sharpness_metrics(config, outputs, test_images, seed))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("npz", help="the --out file of wae_mmd_torch.py")
    parser.add_argument("--data_dir", default=DEFAULT_FASHION_MNIST_DIR)
    parser.add_argument("--classifier_dir", default="",
                        help="default: wae_tf's cache, ~/.cache/wae_tf/classifier/fashion_mnist")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the evaluation's own draws (MMD's prior samples), as "
                             "wae_tf.evaluate's --seed")
    args = parser.parse_args()
    print(json.dumps(score(args.npz, args.data_dir, args.classifier_dir, args.seed),
                     sort_keys=True))


if __name__ == "__main__":
    main()
