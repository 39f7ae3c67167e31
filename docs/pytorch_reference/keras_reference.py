"""wae_tf's side of the PyTorch comparison (run in wae_tf's venv, from the repository's root).

Prints each layer of wae_tf's WAE-MMD networks (networks.make_models, plain Keras layers) with its
trainable parameters, forward FLOPs per image (benchmarking.layer_forward_flops) and output shape,
and the step's FLOPs per image (benchmarking.analytic_step_flops, the benchmark's GF/img). With
--out=REF.npz it also writes, for `wae_mmd_torch.py --check_against=REF.npz`: the initial
variables (BatchNorm's moving statistics randomised, so that eval mode checks them), a batch of
training images, the eval-mode codes and reconstructions, and STEPS training steps of wae_tf's
own step on that batch (training.ae_gradients + the Adam update): their prior samples, losses,
gradient norms and BatchNorm moving statistics.
"""

import argparse
import os
import sys

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from wae_tf import benchmarking, data, networks, training  # noqa: E402
from wae_tf.config import Config, DEFAULT_FASHION_MNIST_DIR  # noqa: E402

IMAGE_SHAPE = (28, 28, 1)
# Adam's first update is lr * sign(g) whatever its betas: the second and third test them.
STEPS = 3


def describe(state) -> None:
    """One line per layer with weights, then the totals and the step's FLOPs per image."""
    flops = {}
    for model in (state.encoder, state.decoder):
        flops.update(benchmarking.layer_forward_flops(model))
    total = 0
    for model in (state.encoder, state.decoder):
        for layer in model.layers:
            if not layer.weights:
                continue
            params = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
            total += params
            name = f"{model.name}/{layer.name}"
            print(f"{name:22s} {params:>11,d} params {flops.get(name, 0):>14,d} forward "
                  f"FLOPs/image out {list(layer.output.shape[1:])}")
    step = benchmarking.analytic_step_flops(state)["step"]
    print(f"wae_tf: {total:,d} trainable parameters, {step / 1e9:.4f} GFLOP/image/step")


def variables(state, prefix: str, batch_norm_only: bool = False) -> dict:
    """`<prefix>/<layer>/<i>` -> the layer's i-th weight (Keras order: kernel, bias; BatchNorm
    gamma, beta, moving mean, moving variance)."""
    return {f"{prefix}/{layer.name}/{i}": w.numpy()
            for model in (state.encoder, state.decoder) for layer in model.layers
            if not batch_norm_only or isinstance(layer, keras.layers.BatchNormalization)
            for i, w in enumerate(layer.weights)}


def randomise_moving_statistics(state, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for model in (state.encoder, state.decoder):
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                size = layer.moving_mean.shape
                layer.moving_mean.assign(rng.normal(0.0, 0.1, size).astype(np.float32))
                layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype(np.float32))


def reference(config: Config, images: np.ndarray) -> dict:
    """Everything --check_against compares, from a fresh state seeded by config.seed."""
    state = training.create_state(config, IMAGE_SHAPE, 600, 1, layer_set=networks.KERAS_LAYERS)
    randomise_moving_statistics(state, config.seed)
    out = variables(state, "w")
    x = tf.constant(images)  # [B, 28, 28, 1]
    out.update(x=images, width_divisor=config.width_divisor, z_dim=config.z_dim,
               lambda_reg=config.lambda_reg, learning_rate=config.learning_rate)
    z_eval = state.encoder(x, training=False)
    out.update(z_eval=z_eval.numpy(), y_eval=state.decoder(z_eval, training=False).numpy())
    for step in range(STEPS):
        grads, metrics, _, pz = training.ae_gradients(config, state, x,
                                                      tf.constant(step, tf.int64))
        state.ae_optimizer.apply_gradients(zip(grads, state.ae_variables))
        out.update({f"{name}{step}": float(metrics[name])
                    for name in ("loss", "recon", "penalty")})
        out[f"pz{step}"] = pz.numpy()
        out[f"grad_norms{step}"] = np.array([float(tf.norm(g)) for g in grads])
        out.update(variables(state, f"bn{step}", batch_norm_only=True))
    out["steps"] = STEPS
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width_divisor", type=int, default=4)
    parser.add_argument("--z_dim", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=DEFAULT_FASHION_MNIST_DIR)
    parser.add_argument("--out", default="", help="REF.npz for wae_mmd_torch.py --check_against")
    args = parser.parse_args()
    config = Config(width_divisor=args.width_divisor, z_dim=args.z_dim, seed=args.seed,
                    batch_size=args.batch_size, data_dir=args.data_dir, train_steps=2).validate()
    state = training.create_state(config, IMAGE_SHAPE, 600, 1, layer_set=networks.KERAS_LAYERS)
    describe(state)
    if args.out:
        train = data.load_split(config, "train")
        images = train.images[:args.batch_size].astype(np.float32) / 255.0
        np.savez(args.out, **reference(config, images))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
