"""The WAE step: models, optimizers and step counter (TrainState), the per-replica step and the
distributed step that runs it on every replica."""

import dataclasses
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

from wae_tf.config import Config
from wae_tf.model import networks, regularizers

# Tags folded into the per-step seed so that each random draw has its own stream.
_NOISE, _PRIOR, _EPS, _DIRECTIONS, _PRETRAIN = 1, 2, 3, 4, 5
# Encoder pre-training stops once its loss is below this (the paper's code).
PRETRAIN_TARGET = 0.1


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


def learning_rate_multiplier(schedule: str, epoch, num_epochs: int):
    """The paper code's decay of the learning rate at (0-based) `epoch` (tf or numpy scalar)."""
    epoch = tf.cast(epoch, tf.float32)
    if schedule == "manual":  # x1/2 from epoch 30, x1/10 from 50, x1/100 from 100.
        return tf.where(epoch >= 100, 0.01, tf.where(epoch >= 50, 0.1,
                                                      tf.where(epoch >= 30, 0.5, 1.0)))
    if schedule == "smooth":  # divided by 100^(1/E) at the start of every epoch, the first
        # included (the paper code's `manual_smooth`): 100x lower in the last one.
        return tf.pow(100.0, -(epoch + 1.0) / float(max(num_epochs, 1)))
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
                  ) -> networks.Models:
    """Encoder, decoder and (for --regularizer=gan) discriminator, seeded by --seed.

    `layer_set` defaults to plain Keras layers; the loop and the benchmark pass the faster ones of
    this machine (wae_tf.perf.fast_layers.training_layers), with the same variables.
    """
    keras.utils.set_random_seed(config.seed)
    return networks.make_models(config, image_shape, layer_set or networks.KERAS_LAYERS)


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
    fails in graph mode (keras-team/keras#23085).
    """
    models = create_models(config, image_shape, layer_set)
    ae_opt, disc_opt = create_optimizers(config, steps_per_epoch, num_epochs)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    state = TrainState(models.encoder, models.decoder, models.discriminator, ae_opt, disc_opt,
                       step)
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


# The Gaussian encoder's log-variance is clipped to this range, as in the paper's code.
LOG_VAR_LIMIT = 50.0


def encode(config: Config, encoder, images, eps, training: bool):
    """Codes z [b, z_dim] (sampled for a Gaussian encoder), mean and log-variance (or None)."""
    out = encoder(images, training=training)
    if config.encoder == "gaussian":
        mean, log_var = out  # [b, z_dim] each
        log_var = tf.clip_by_value(log_var, -LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        return mean + tf.exp(0.5 * log_var) * eps, mean, log_var
    return out, out, None


def encoder_eps(config: Config, step, global_batch, local):
    """This replica's N(0, I) draws [local, z_dim] for a Gaussian encoder's codes, else None."""
    if config.encoder != "gaussian":
        return None
    return replica_slice(tf.random.stateless_normal([global_batch, config.z_dim],
                                                    step_seed(config.seed, step, _EPS)), local)


def noisy_inputs(config: Config, images, step, global_batch):
    """The encoder's training inputs: images [b, H, W, C] plus N(0, input_noise^2) truncated at
    2 std (the paper code's `add_noise`), input_noise in --pixel_range units."""
    if config.input_noise <= 0:
        return images
    shape = tf.concat([[global_batch], tf.shape(images)[1:]], 0)
    noise = tf.random.stateless_truncated_normal(shape, step_seed(config.seed, step, _NOISE))
    scale = config.input_noise / config.pixel_scale  # the images here are in [0, 1]
    return images + scale * replica_slice(noise, tf.shape(images)[0])


def imq_base(config: Config) -> float:
    """The IMQ kernel's base constant: E||z - z'||^2 under the prior."""
    return regularizers.prior_squared_distance(config.prior, config.z_dim, config.prior_scale)


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
            value = regularizers.mmd_penalty(qz, pz, config.kernel, imq_base(config),
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

    Returns (grads, metrics, the encoder's inputs [b, H, W, C], the prior sample of the global
    batch [B, z_dim]); summing grads and metrics over replicas gives those of the global batch.
    """
    ctx = tf.distribute.get_replica_context()
    local = tf.shape(images)[0]
    global_batch = local * ctx.num_replicas_in_sync
    inputs = noisy_inputs(config, images, step, global_batch)
    eps = encoder_eps(config, step, global_batch, local)
    pz_global = regularizers.sample_prior(config.prior, global_batch, config.z_dim,
                                          config.prior_scale, step_seed(config.seed, step, _PRIOR))
    with tf.GradientTape() as tape:
        z, mean, log_var = encode(config, state.encoder, inputs, eps, training=True)
        recon = state.decoder(z, training=True)  # [b, H, W, C]
        recon_share = tf.reduce_sum(regularizers.reconstruction_cost(
            images, recon, config.recon, config.pixel_scale))
        recon_share /= tf.cast(global_batch, tf.float32)
        latent = dict(z=z, mean=mean, log_var=log_var, pz_global=pz_global,
                      global_batch=global_batch,
                      seed_directions=step_seed(config.seed, step, _DIRECTIONS))
        penalty_share = latent_penalty(config, state, latent)
        loss_share = recon_share + config.lambda_reg * penalty_share
        scaled_loss = state.ae_optimizer.scale_loss(loss_share)  # identity unless mixed_float16
    grads = tape.gradient(scaled_loss, state.ae_variables)
    metrics = dict(loss=loss_share, recon=recon_share, penalty=penalty_share)
    return grads, metrics, inputs, pz_global


def train_step(config: Config, state: TrainState, images, step) -> Dict[str, tf.Tensor]:
    """One optimisation step on this replica's images [b, H, W, C]; returns its loss shares.

    The auto-encoder's (all-reduced) gradients are applied first; for gan the discriminator
    then learns from the codes of the updated encoder (a second encoder pass on the same
    inputs), as the paper's code does in its two session runs.
    """
    grads, metrics, inputs, pz_global = ae_gradients(config, state, images, step)
    state.ae_optimizer.apply_gradients(zip(grads, state.ae_variables))
    if state.discriminator is not None:
        local = tf.shape(images)[0]
        eps = encoder_eps(config, step, tf.shape(pz_global)[0], local)  # the same draws
        z = encode(config, state.encoder, inputs, eps, training=True)[0]
        metrics["disc_loss"] = discriminator_update(
            state, replica_slice(pz_global, local), tf.stop_gradient(z),
            local * tf.distribute.get_replica_context().num_replicas_in_sync)
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
    """A tf.function running `num_steps` distributed steps; returns the last step's losses.
    With --steps_per_loop=1 num_steps must be 1: the step is then traced once (no loop body),
    which halves the start-up's tracing."""
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
        if config.steps_per_loop == 1:  # the step traced once, not also as a loop body
            with tf.control_dependencies([tf.debugging.assert_equal(
                    num_steps, 1, message="--steps_per_loop=1: one step a call")]):
                return one_step(iterator)
        metrics = one_step(iterator)
        for _ in tf.range(num_steps - 1):
            metrics = one_step(iterator)
        return metrics

    return train_fn


# ----------------------------------------------------------------------------- pre-training


def make_pretrain_fn(config: Config, state: TrainState, strategy) -> Callable:
    """A tf.function: one distributed step of the encoder pre-training of the paper's code (its
    own Adam at --learning_rate, beta1 --adam_beta1): the codes of the global batch are moved
    towards the prior's mean and covariance (regularizers.moment_matching_loss)."""
    variables = state.encoder.trainable_variables
    with strategy.scope():
        optimizer = keras.optimizers.Adam(config.learning_rate, beta_1=config.adam_beta1,
                                          beta_2=config.adam_beta2, name="pretrain_adam")
        optimizer.build(variables)  # eagerly, in scope (keras-team/keras#23085)

    def replica_step(images, step):
        ctx = tf.distribute.get_replica_context()
        local = tf.shape(images)[0]
        global_batch = local * ctx.num_replicas_in_sync
        seed = step_seed(config.seed, -1 - step, _PRETRAIN)  # steps < 0: never training's
        inputs = noisy_inputs(config, images, -1 - step, global_batch)
        pz = regularizers.sample_prior(config.prior, global_batch, config.z_dim,
                                       config.prior_scale, seed)
        with tf.GradientTape() as tape:
            z = encode(config, state.encoder, inputs,
                       encoder_eps(config, -1 - step, global_batch, local), training=True)[0]
            loss = regularizers.moment_matching_loss(ctx.all_gather(z, axis=0), pz)
            share = loss / tf.cast(ctx.num_replicas_in_sync, loss.dtype)
        optimizer.apply_gradients(zip(tape.gradient(share, variables), variables))
        return share

    @tf.function
    def pretrain_fn(iterator, step):
        per_replica = strategy.run(replica_step, args=(next(iterator), step))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return pretrain_fn


def pretrain_encoder(config: Config, state: TrainState, strategy, iterator) -> list:
    """Run up to --encoder_pretrain_steps steps on batches of `iterator`, stopping once the loss
    is under PRETRAIN_TARGET; returns the losses."""
    pretrain_fn = make_pretrain_fn(config, state, strategy)
    losses = []
    for step in range(config.encoder_pretrain_steps):
        losses.append(float(pretrain_fn(iterator, tf.constant(step, tf.int64))))
        if losses[-1] < PRETRAIN_TARGET:
            break
    return losses
