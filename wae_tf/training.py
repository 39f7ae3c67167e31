"""Models, optimizers, the per-replica WAE step, the distributed step and the training loop."""

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Callable, Dict, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import checkpoints
from wae_tf import data
from wae_tf import export
from wae_tf import fast_layers
from wae_tf import networks
from wae_tf import regularizers
from wae_tf import visualize
from wae_tf.config import Config, ConfigError

# Tags folded into the per-step seed so that each random draw has its own stream.
_NOISE, _PRIOR, _EPS, _DIRECTIONS = 1, 2, 3, 4
NUM_IMAGES_LOGGED = 64


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or Inf; the run stops without saving the broken state."""


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds; created inside `strategy.scope()`."""
    encoder: keras.Model
    decoder: keras.Model
    discriminator: Optional[keras.Model]
    ae_optimizer: keras.optimizers.Optimizer
    disc_optimizer: Optional[keras.optimizers.Optimizer]
    step: tf.Variable

    @property
    def ae_variables(self):
        return self.encoder.trainable_variables + self.decoder.trainable_variables

    def checkpoint(self) -> tf.train.Checkpoint:
        items = dict(encoder=self.encoder, decoder=self.decoder, ae_optimizer=self.ae_optimizer,
                     step=self.step)
        if self.discriminator is not None:
            items.update(discriminator=self.discriminator, disc_optimizer=self.disc_optimizer)
        return tf.train.Checkpoint(**items)


# ----------------------------------------------------------------------------- setup


def configure_cpu_devices(count: int) -> None:
    """Split the CPU into `count` logical devices; must run before TensorFlow initialises."""
    if count <= 0:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as error:  # TF already initialised: only fine if the split matches.
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise ConfigError(f"--cpu_devices={count} must be applied before TensorFlow starts "
                              f"({error}).") from error


def create_strategy(config: Config) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by --strategy (auto: mirrored with more than one GPU).

    multi_worker reads TF_CONFIG and must be created before TensorFlow initialises (listing
    devices does), so before anything else.
    """
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    name = config.strategy
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or (not gpus and len(cpus) > 1) else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    devices = [d.name for d in (gpus or cpus)]
    return tf.distribute.MirroredStrategy(devices)


def learning_rate_multiplier(schedule: str, epoch, num_epochs: int):
    """The paper code's decay of the learning rate at (0-based) `epoch` (tf or numpy scalar)."""
    epoch = tf.cast(epoch, tf.float32)
    if schedule == "manual":  # x1/2 from epoch 30, x1/10 from 50, x1/100 from 100.
        return tf.where(epoch >= 100, 0.01, tf.where(epoch >= 50, 0.1,
                                                      tf.where(epoch >= 30, 0.5, 1.0)))
    if schedule == "smooth":  # divided by 100^(1/E) each epoch: 100x lower at the last one.
        return tf.pow(100.0, -epoch / float(max(num_epochs, 1)))
    return tf.constant(1.0)


@keras.saving.register_keras_serializable(package="wae_tf")
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A base learning rate times `learning_rate_multiplier` of the epoch the step is in."""

    def __init__(self, base, schedule, steps_per_epoch, num_epochs):
        self.base, self.schedule = base, schedule
        self.steps_per_epoch, self.num_epochs = steps_per_epoch, num_epochs

    def __call__(self, step):
        epoch = tf.math.floordiv(tf.cast(step, tf.int64), self.steps_per_epoch)
        return self.base * learning_rate_multiplier(self.schedule, epoch, self.num_epochs)

    def get_config(self):
        return dict(base=self.base, schedule=self.schedule, steps_per_epoch=self.steps_per_epoch,
                    num_epochs=self.num_epochs)


def create_models(config: Config, image_shape, layer_set: Optional[networks.LayerSet] = None
                  ) -> Dict[str, Optional[keras.Model]]:
    """Encoder, decoder and (for --regularizer=gan) discriminator, seeded by --seed.

    `layer_set` defaults to the fastest layers on this machine (fast_layers.training_layers).
    """
    layer_set = layer_set or fast_layers.training_layers(config)
    keras.utils.set_random_seed(config.seed)
    networks.network_image_size(image_shape)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(  # read by each layer when it is built
        "float32" if config.mixed_precision == "none" else config.mixed_precision)
    try:
        discriminator = None
        if config.regularizer == "gan":
            discriminator = networks.make_discriminator(config, image_shape)
        return dict(encoder=networks.make_encoder(config, image_shape, layer_set),
                    decoder=networks.make_decoder(config, image_shape, layer_set),
                    discriminator=discriminator)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def create_optimizers(config: Config, steps_per_epoch: int, num_epochs: int):
    """Adam (beta1 0.5) for the auto-encoder and, for gan, for the discriminator.

    With --mixed_precision=mixed_float16 each is wrapped in a dynamic loss scaler (float16
    gradients underflow otherwise); the step scales its losses with `optimizer.scale_loss`.
    """
    def adam(rate, name):
        schedule = EpochSchedule(rate, config.lr_schedule, steps_per_epoch, num_epochs)
        optimizer = keras.optimizers.Adam(schedule, beta_1=config.adam_beta1,
                                          beta_2=config.adam_beta2, name=name)
        if config.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=f"{name}_scaled")
        return optimizer
    disc = adam(config.disc_learning_rate, "disc_adam") if config.regularizer == "gan" else None
    return adam(config.learning_rate, "ae_adam"), disc


def create_state(config: Config, image_shape, steps_per_epoch: int, num_epochs: int,
                 layer_set: Optional[networks.LayerSet] = None) -> TrainState:
    """Models (see create_models), optimizers and step counter; call inside `strategy.scope()`.

    The optimizers are built eagerly here: a Keras optimizer first built inside `strategy.run`
    fails in graph mode (keras issue 23085).
    """
    models = create_models(config, image_shape, layer_set)
    ae_opt, disc_opt = create_optimizers(config, steps_per_epoch, num_epochs)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    state = TrainState(models["encoder"], models["decoder"], models["discriminator"], ae_opt,
                       disc_opt, step)
    ae_opt.build(state.ae_variables)
    if disc_opt is not None:
        disc_opt.build(state.discriminator.trainable_variables)
    return state


# ----------------------------------------------------------------------------- the step


def step_seed(seed: int, step, tag: int):
    """A stateless seed [2] that depends only on (--seed, step, tag): replicas share it."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    return tf.random.experimental.stateless_fold_in(tf.cast(base, tf.int32), tag)


def replica_slice(global_tensor, local_batch):
    """This replica's rows [local_batch, ...] of a tensor drawn for the whole global batch.

    Every replica draws the same global tensor from a shared seed and keeps its own rows, so
    replicas use different prior samples and noise, and N replicas draw what 1 replica does.
    """
    replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
    return global_tensor[replica_id * local_batch:(replica_id + 1) * local_batch]


def encode(config: Config, encoder, images, eps, training: bool):
    """Codes z [b, z_dim] (sampled for a Gaussian encoder), mean and log-variance (or None)."""
    out = encoder(images, training=training)
    if config.encoder == "gaussian":
        mean, log_var = out  # [b, z_dim] each
        return mean + tf.exp(0.5 * log_var) * eps, mean, log_var
    return out, out, None


def latent_penalty(config: Config, state: TrainState, latent: dict):
    """This replica's share of D(Q_Z, P_Z): summed over replicas it is the global penalty.

    MMD and SWD are whole-batch statistics: computed on the codes of the global batch (gathered
    from all replicas) and divided by the replica count. GAN and KL are per-example terms,
    summed here and divided by the global batch.
    """
    ctx = tf.distribute.get_replica_context()
    replicas = tf.cast(ctx.num_replicas_in_sync, tf.float32)
    global_batch = tf.cast(latent["global_batch"], tf.float32)
    if config.regularizer in ("mmd", "swd"):
        qz = ctx.all_gather(latent["z"], axis=0)  # [B, z_dim]
        pz = latent["pz_global"]  # [B, z_dim]
        if config.regularizer == "mmd":
            value = regularizers.mmd_penalty(qz, pz, config.kernel, config.prior_scale,
                                             config.rbf_sigma2)
        else:
            directions = regularizers.random_directions(
                config.z_dim, config.swd_projections, latent["seed_directions"])
            value = regularizers.sliced_wasserstein(qz, pz, directions)
        return value / replicas
    if config.regularizer == "gan":
        per_example = regularizers.gan_encoder_loss(state.discriminator(latent["z"]))
    else:  # kl
        per_example = regularizers.kl_to_normal_prior(latent["mean"], latent["log_var"],
                                                      config.prior_scale)
    return tf.reduce_sum(per_example) / global_batch


def ae_gradients(config: Config, state: TrainState, images, step):
    """Losses and auto-encoder gradients of this replica's images [b, H, W, C].

    Returns (grads, metrics, codes z [b, z_dim], prior sample of the global batch [B, z_dim]);
    summing grads and metrics over replicas gives those of the global batch.
    """
    ctx = tf.distribute.get_replica_context()
    local = tf.shape(images)[0]
    global_batch = local * ctx.num_replicas_in_sync
    draw = lambda tag, shape: replica_slice(  # noqa: E731
        tf.random.stateless_normal(shape, step_seed(config.seed, step, tag)), local)
    inputs = images
    if config.input_noise > 0:
        noise = draw(_NOISE, tf.concat([[global_batch], tf.shape(images)[1:]], 0))
        inputs = images + config.input_noise * noise
    eps = draw(_EPS, [global_batch, config.z_dim]) if config.encoder == "gaussian" else None
    pz_global = regularizers.sample_prior(config.prior, global_batch, config.z_dim,
                                          config.prior_scale, step_seed(config.seed, step, _PRIOR))
    with tf.GradientTape() as tape:
        z, mean, log_var = encode(config, state.encoder, inputs, eps, training=True)
        recon = state.decoder(z, training=True)  # [b, H, W, C]
        recon_share = tf.reduce_sum(regularizers.reconstruction_cost(images, recon, config.recon))
        recon_share /= tf.cast(global_batch, tf.float32)
        latent = dict(z=z, mean=mean, log_var=log_var, pz_global=pz_global,
                      global_batch=global_batch,
                      seed_directions=step_seed(config.seed, step, _DIRECTIONS))
        penalty_share = latent_penalty(config, state, latent)
        loss_share = recon_share + config.lambda_reg * penalty_share
        scaled_loss = state.ae_optimizer.scale_loss(loss_share)  # identity unless mixed_float16
    grads = tape.gradient(scaled_loss, state.ae_variables)
    return grads, dict(loss=loss_share, recon=recon_share, penalty=penalty_share), z, pz_global


def train_step(config: Config, state: TrainState, images, step) -> Dict[str, tf.Tensor]:
    """One optimisation step on this replica's images [b, H, W, C]; returns its loss shares.

    The discriminator (gan) learns from the same codes in its own tape, then both optimizers
    apply their (all-reduced) gradients.
    """
    grads, metrics, z, pz_global = ae_gradients(config, state, images, step)
    if state.discriminator is not None:
        local = tf.shape(images)[0]
        metrics["disc_loss"] = discriminator_update(
            state, replica_slice(pz_global, local), tf.stop_gradient(z),
            local * tf.distribute.get_replica_context().num_replicas_in_sync)
    state.ae_optimizer.apply_gradients(zip(grads, state.ae_variables))
    return metrics


def discriminator_update(state: TrainState, pz, qz, global_batch):
    """One Adam step of the latent discriminator: prior samples pz are real, codes qz fake."""
    variables = state.discriminator.trainable_variables
    with tf.GradientTape() as tape:
        per_example = regularizers.gan_discriminator_loss(state.discriminator(pz),
                                                          state.discriminator(qz))
        loss_share = tf.reduce_sum(per_example) / tf.cast(global_batch, tf.float32)
        scaled_loss = state.disc_optimizer.scale_loss(loss_share)  # identity unless mixed_float16
    grads = tape.gradient(scaled_loss, variables)
    state.disc_optimizer.apply_gradients(zip(grads, variables))
    return loss_share


def make_train_fn(config: Config, state: TrainState, strategy) -> Callable:
    """A tf.function running `num_steps` distributed steps; returns the last step's losses."""
    replica_step = lambda images, step: train_step(config, state, images, step)  # noqa: E731
    if config.jit_compile:  # a nested function here can reorder BatchNorm's collectives
        replica_step = tf.function(replica_step, jit_compile=True)

    def one_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator), state.step.read_value()))
        state.step.assign_add(1)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    @tf.function
    def train_fn(iterator, num_steps):
        metrics = one_step(iterator)
        for _ in tf.range(num_steps - 1):
            metrics = one_step(iterator)
        return metrics

    return train_fn


# ----------------------------------------------------------------------------- evaluation


def make_eval_fns(config: Config, state: TrainState):
    """tf.functions (not distributed) for test reconstructions and prior samples."""
    @tf.function(autograph=False)  # no Python control flow to convert
    def reconstruct(images):
        recon = state.decoder(networks.encoder_mean(state.encoder, images), training=False)
        return recon, regularizers.reconstruction_cost(images, recon, config.recon)

    @tf.function(autograph=False)
    def decode(z):
        return state.decoder(z, training=False)

    return reconstruct, decode


def evaluate_reconstruction(reconstruct, test: data.ImageData, batch_size: int) -> dict:
    """Test reconstruction cost per image (the training cost) and MSE per pixel."""
    cost, sq_err, count = 0.0, 0.0, 0
    for images, _ in data.make_eval_dataset(test, batch_size):
        recon, per_example = reconstruct(images)
        cost += float(tf.reduce_sum(per_example))
        sq_err += float(tf.reduce_sum(tf.square(images - recon)))
        count += int(images.shape[0])
    pixels = count * int(np.prod(test.image_shape))
    return {"test_recon_cost": cost / count, "test_mse_per_pixel": sq_err / pixels}


def image_summaries(config: Config, reconstruct, decode, test_images, step: int, workdir: str,
                    write_png: bool) -> None:
    """Reconstruction and sample grids to TensorBoard (and PNG files at the end of a run)."""
    recon, _ = reconstruct(test_images)
    prior_z = regularizers.sample_prior(config.prior, NUM_IMAGES_LOGGED, config.z_dim,
                                        config.prior_scale, tf.constant([config.seed, 12345]))
    samples = decode(prior_z)
    grids = {"reconstructions": visualize.side_by_side(test_images[:32], recon[:32]),
             "samples": visualize.image_grid(samples)}
    for name, grid in grids.items():
        tf.summary.image(name, grid[None], step=step)
        if write_png:
            visualize.save_png(os.path.join(workdir, f"{name}.png"), grid)


# ----------------------------------------------------------------------------- the loop


def _total_steps(config: Config, steps_per_epoch: int) -> int:
    return config.train_steps if config.train_steps > 0 else config.epochs * steps_per_epoch


def _load_data(config: Config, data_override):
    if data_override is not None:
        return data_override
    return data.load_split(config, "train"), data.load_split(config, "test")


def _check_batch(config: Config, strategy, train: data.ImageData) -> None:
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size={config.batch_size} is not divisible by the "
                          f"{replicas} replicas: use a multiple of {replicas}.")
    if train.num_examples < config.batch_size:
        raise ConfigError(f"{train.name} has {train.num_examples} images, fewer than "
                          f"--batch_size={config.batch_size}.")


def _log_scalars(metrics: dict, lr: float, step: int, rate: float, left_s: float) -> None:
    for name, value in metrics.items():
        tf.summary.scalar(f"train/{name}", value, step=step)
    tf.summary.scalar("train/learning_rate", lr, step=step)
    tf.summary.scalar("train/images_per_second", rate, step=step)
    text = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    logging.info("step %d %s lr=%.2e %.0f images/s, %.0f s left", step, text, lr, rate, left_s)


def _check_finite(metrics: dict, step: int, manager) -> None:
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"Non-finite loss at step {step}: {bad}. Nothing was saved after it; the last good "
            f"checkpoint is {manager.latest_checkpoint or '(none)'}. Lower --learning_rate or "
            "--lambda_reg, or check the data for NaN.")


def train_and_evaluate(config: Config, workdir: str, strategy=None, data_override=None) -> dict:
    """Train (resuming from `workdir`), then evaluate and export; returns the final metrics.

    `strategy` and `data_override` = (train, test) ImageData let tests inject both.
    """
    config.validate()
    strategy = strategy or create_strategy(config)
    train, test = _load_data(config, data_override)
    image_shape = train.image_shape
    _check_batch(config, strategy, train)
    steps_per_epoch = data.steps_per_epoch(train.num_examples, config.batch_size)
    total_steps = _total_steps(config, steps_per_epoch)
    num_epochs = config.epochs or -(-total_steps // steps_per_epoch)
    chief = checkpoints.is_chief(strategy)
    tf.io.gfile.makedirs(workdir)
    checkpoints.check_model_signature(workdir, config, image_shape, write=chief)
    with strategy.scope():
        state = create_state(config, image_shape, steps_per_epoch, num_epochs)
    manager = checkpoints.create_manager(state.checkpoint(), workdir, config, strategy)
    checkpoints.restore_latest(manager, os.path.join(workdir, "checkpoints"))  # the chief's
    if chief:
        checkpoints.write_json(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
    start = int(state.step.numpy())
    _check_workers_agree(strategy, start)
    logging.info("%s: %d train images %s, %d steps/epoch, from step %d to %d on %d replica(s).",
                 train.name, train.num_examples, image_shape, steps_per_epoch, start, total_steps,
                 strategy.num_replicas_in_sync)
    dataset = data.make_train_dataset(train, config.batch_size, config.seed, start_step=start)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    writer = tf.summary.create_file_writer(os.path.join(workdir, "train")) if chief else \
        tf.summary.create_noop_writer()
    reconstruct, decode = make_eval_fns(config, state)
    test_images = tf.convert_to_tensor(data.to_float(test.images[:NUM_IMAGES_LOGGED]))
    with writer.as_default():
        metrics = _run_loop(config, state, strategy, iterator, manager, total_steps,
                            (reconstruct, decode, test_images, workdir))
        step = int(state.step.numpy())
        if step > start or not manager.latest_checkpoint:
            manager.save(checkpoint_number=step)
        results = evaluate_reconstruction(reconstruct, test, config.batch_size)
        for name, value in results.items():
            tf.summary.scalar(f"test/{name}", value, step=step)
        image_summaries(config, reconstruct, decode, test_images, step, workdir, write_png=chief)
    writer.flush()
    results.update({f"train_{k}": v for k, v in metrics.items()}, step=step)
    logging.info("Finished at step %d: %s", step, json.dumps(results))
    if chief:
        checkpoints.write_json(os.path.join(workdir, "results.json"), results)
    export_base = config.export_dir or os.path.join(workdir, "export")
    if config.export:
        export.export_saved_model(state.encoder, state.decoder, config, image_shape,
                                  checkpoints.write_dir(export_base, strategy), step)
    checkpoints.cleanup_worker_dirs([os.path.join(workdir, "checkpoints"), export_base], strategy)
    return results


def _run_loop(config, state, strategy, iterator, manager, total_steps, images) -> dict:
    """Call the compiled steps until `total_steps`, logging, drawing and checkpointing.

    After a SIGTERM (on any worker) it saves a checkpoint and raises Preempted.
    """
    train_fn = make_train_fn(config, state, strategy)
    step, metrics = int(state.step.numpy()), {}
    first, window_start, window_step = step, time.time(), step
    with _SigtermFlag() as sigterm:
        while step < total_steps and not any(_all_workers(strategy, sigterm.received)):
            num = min(config.steps_per_loop, total_steps - step)
            metrics = {k: float(v) for k, v in train_fn(iterator, tf.constant(num)).items()}
            previous, step = step, step + num
            _check_finite(metrics, step, manager)
            crossed = lambda every: step // every > previous // every or step == total_steps  # noqa
            if crossed(config.log_every) or previous == first:
                elapsed = max(time.time() - window_start, 1e-9)
                rate = (step - window_step) * config.batch_size / elapsed
                lr = float(state.ae_optimizer.learning_rate)
                _log_scalars(metrics, lr, step, rate,
                             (total_steps - step) * config.batch_size / rate)
                window_start, window_step = time.time(), step
            if crossed(config.image_every):
                image_summaries(config, *images[:3], step, images[3], write_png=False)
            if crossed(config.checkpoint_every):
                manager.save(checkpoint_number=step)
    if step < total_steps:  # stopped by SIGTERM
        raise Preempted(f"SIGTERM at step {step}: saved {manager.save(checkpoint_number=step)}; "
                        "rerun the same command to resume.")
    return metrics


class Preempted(Exception):
    """SIGTERM stopped training after saving a checkpoint; entry points exit with code 143."""


class _SigtermFlag:
    """While entered (in the main thread), SIGTERM sets `received` instead of killing."""

    def __init__(self):
        self.received, self._installed, self._previous = False, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True
        logging.warning("SIGTERM received: saving a checkpoint after the current step, then exit.")

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


def _all_workers(strategy, value: float) -> list:
    """`value` of every replica of a multi-worker run ([value] otherwise), by an all-gather.

    A collective: every worker must call it at the same point of the run.
    """
    if not checkpoints.is_multi_worker(strategy):
        return [value]
    return _gather_fn(strategy)(tf.constant(float(value))).numpy().tolist()


@functools.lru_cache(maxsize=None)
def _gather_fn(strategy):
    """A tf.function gathering a float32 scalar from every replica (eagerly: 300 ms a call)."""
    @tf.function
    def gather(value):
        per_replica = strategy.run(lambda: tf.reshape(value, [1]))
        return strategy.gather(per_replica, axis=0)  # [replicas]
    return gather


def _check_workers_agree(strategy, start: int) -> None:
    """Fail (on every worker) if the workers restored different steps: no shared workdir."""
    steps = _all_workers(strategy, start)
    low, high = int(min(steps)), int(max(steps))
    if low != high:
        raise ConfigError(f"The workers resumed from steps {low} to {high}: every worker must "
                          "read the chief's --workdir (a shared file system such as NFS or gs://).")
