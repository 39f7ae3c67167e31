"""The WAE step: models, optimizers and step counter (TrainState), the per-replica step and the
distributed step that runs it on every replica."""

import dataclasses
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

from wae_tf import fast_layers
from wae_tf import networks
from wae_tf import regularizers
from wae_tf.config import Config

# Tags folded into the per-step seed so that each random draw has its own stream.
_NOISE, _PRIOR, _EPS, _DIRECTIONS = 1, 2, 3, 4


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
                  ) -> networks.Models:
    """Encoder, decoder and (for --regularizer=gan) discriminator, seeded by --seed.

    `layer_set` defaults to the fastest layers on this machine (fast_layers.training_layers).
    """
    keras.utils.set_random_seed(config.seed)
    return networks.make_models(config, image_shape,
                                layer_set or fast_layers.training_layers(config))


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
