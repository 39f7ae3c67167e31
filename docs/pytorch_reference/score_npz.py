"""Scores the outputs of wae_mmd_torch.py --out=FILE.npz with wae_tf's own metrics; one JSON line.

Run in wae_tf's venv from the repository's root. The metrics are those of `python -m
wae_tf.evaluate`, computed by the same functions of wae_tf.evaluation on the same data: test
reconstruction cost and MSE per pixel of the 10,000 test images (in file order); FID, KID,
precision and recall (k = 3) of the decoded prior samples against the test images in the feature
space of --fid_features (default: wae_tf's cached Fashion-MNIST classifier,
~/.cache/wae_tf/classifier/fashion_mnist, trained there first if absent; keys fid_classifier, ...);
MMD between the test codes and prior samples; Laplacian sharpness. The prior samples were drawn by
torch, so they differ from wae_tf's draws for the same --seed.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from wae_tf import data  # noqa: E402
from wae_tf.config import DEFAULT_FASHION_MNIST_DIR, Config  # noqa: E402
from wae_tf.errors import ConfigError  # noqa: E402
from wae_tf.evaluation import evaluator, features, stats_cache  # noqa: E402


def score(path: str, data_dir: str, classifier_dir: str, seed: int,
          fid_features: str = "classifier") -> dict:
    """wae_tf's evaluation metrics of the arrays in `path` (see the module docstring)."""
    arrays = np.load(path)
    config = Config(dataset="fashion_mnist", data_dir=data_dir, z_dim=int(arrays["z_dim"]),
                    width_divisor=int(arrays["width_divisor"]))
    recon, samples = arrays["recon"], arrays["samples"]  # [n, 28, 28, 1] float32 in [0, 1]
    codes = arrays["codes"]  # [n, z_dim]: one array, so the MMD is labelled deterministic codes
    test = data.load_split(config, "test")
    index = evaluator.subset_index(test.num_examples, len(recon), seed)
    test_images = test.images[index].astype(np.float32) / 255.0
    if recon.shape != test_images.shape:
        raise ConfigError(f"{path} holds reconstructions {recon.shape}; the test split is "
                          f"{test_images.shape}: save all test images with wae_mmd_torch.py.")
    # pylint: disable=protected-access; the same helpers as evaluator.compute_metrics
    space = evaluator.feature_space(config, test_images.shape[1:], test, fid_features,
                                    classifier_dir=classifier_dir)
    real = evaluator.real_features(config, test, index, space, seed,
                                   stats_cache.resolve("auto", features.cache_root()))
    outputs = dict(codes=codes, q_codes=codes, recon=recon, samples=samples)
    results = dict(source=os.path.abspath(path), implementation=f"torch {arrays['torch']}",
                   steps=int(arrays["steps"]), width_divisor=config.width_divisor,
                   init_std=float(arrays["init_std"]), train_seed=int(arrays["seed"]),
                   num_samples=int(len(samples)), seed=seed,
                   test_mse_per_pixel_torch=float(arrays["test_mse_per_pixel"]))
    results["feature_space"] = space.describe(real.features.shape[1])
    results.update(evaluator._reconstruction_metrics(config, test_images, recon))
    results.update(evaluator._feature_metrics(space, real, samples, seed))
    results.update(evaluator._latent_and_sharpness_metrics(config, outputs, test_images, seed))
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
    parser.add_argument("--fid_features", default="classifier",
                        help="the feature space, as wae_tf.evaluate's --fid_features")
    args = parser.parse_args()
    print(json.dumps(score(args.npz, args.data_dir, args.classifier_dir, args.seed,
                           args.fid_features), sort_keys=True))


if __name__ == "__main__":
    main()
