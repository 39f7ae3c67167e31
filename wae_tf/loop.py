"""The training loop: resume, run the compiled steps, log, checkpoint, then evaluate and export."""

import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import data, fileio, visualize
from wae_tf.config import Config
from wae_tf.errors import ConfigError, NonFiniteLossError, Preempted, error_summary
from wae_tf.evaluation import figures, plots
from wae_tf.evaluation import metrics as metrics_lib
from wae_tf.model import latent_sampler, networks, regularizers
from wae_tf.model import step as step_lib
from wae_tf.perf import convs, fast_layers, hardware
from wae_tf.runtime import checkpoints, cluster, lock, progress, tensorboard_logs
from wae_tf.serving import saved_model

NUM_IMAGES_LOGGED = 64
SAMPLER_FIT_LIMIT = 10000  # training images whose codes the latent sampler is fitted to
_SAMPLES_SEED = 12345  # the logged prior samples: the same codes at every step


# ----------------------------------------------------------------------------- test images


@dataclasses.dataclass
class TestSet:
    """What the loop shows of the test split: its metrics and image grids."""
    reconstruct: Callable  # images [b, H, W, C] -> reconstructions, same shape
    decode: Callable  # z [b, z_dim] -> images
    data: data.ImageData
    shown: tf.Tensor  # [NUM_IMAGES_LOGGED, H, W, C] float32, the images drawn in the grids

    def metrics(self, config: Config) -> dict:
        """metrics.ReconstructionMetrics over the whole test split."""
        tracker = metrics_lib.ReconstructionMetrics(config.recon, config.pixel_scale)
        for images, _ in data.make_eval_dataset(self.data, config.batch_size):
            tracker.update(images, self.reconstruct(images))
        return tracker.result()

    def write_images(self, config: Config, step: int, png_dir: str = "") -> None:
        """Reconstruction and sample grids to TensorBoard (and drawn with captions as PNG files
        into png_dir)."""
        recon = self.reconstruct(self.shown)
        prior_z = regularizers.sample_prior(config.prior, NUM_IMAGES_LOGGED, config.z_dim,
                                            config.prior_scale,
                                            tf.constant([config.seed, _SAMPLES_SEED]))
        samples = self.decode(prior_z)
        grids = {"reconstructions": visualize.side_by_side(self.shown[:32], recon[:32]),
                 "samples": visualize.image_grid(samples)}
        for name, grid in grids.items():
            tf.summary.image(name, grid[None], step=step)
        if png_dir:
            drawn = {"reconstructions": figures.reconstructions_figure(
                         self.shown[:32].numpy(), np.asarray(recon[:32]),
                         f"Test images and their reconstructions G(E(x)), step {step}"),
                     "samples": figures.samples_figure(
                         np.asarray(samples), f"Decoded prior samples, z ~ "
                         f"{figures.prior_name(config)}, step {step}")}
            for name, figure in drawn.items():
                plots.save_png(figure, os.path.join(png_dir, f"{name}.png"))


def make_test_set(state: step_lib.TrainState, test: data.ImageData) -> TestSet:
    """TestSet of the state's networks (tf.functions, not distributed)."""
    @tf.function(autograph=False)  # no Python control flow to convert
    def reconstruct(images):
        return state.decoder(networks.encoder_mean(state.encoder, images), training=False)

    decode = tf.function(lambda z: state.decoder(z, training=False), autograph=False)
    shown = tf.convert_to_tensor(data.to_float(
        test.images[figures.spread(test.num_examples, NUM_IMAGES_LOGGED)]))
    return TestSet(reconstruct, decode, test, shown)


# ----------------------------------------------------------------------------- the loop


def _total_steps(config: Config, steps_per_epoch: int) -> int:
    return config.train_steps if config.train_steps > 0 else config.epochs * steps_per_epoch


def _load_data(config: Config, data_override):
    if data_override is not None:
        return data_override
    return data.load_split(config, "train"), data.load_split(config, "test")


def describe_data(train, test, most: int = 12) -> str:
    """What was found: the source, images per split, their shape and the images per class."""
    h, w, c = train.image_shape
    text = (f"{train.name}: {train.num_examples} train and {test.num_examples} test images, "
            f"{h}x{w}x{c}")
    names = tuple(getattr(train, "class_names", ()) or ())
    if names:
        counts = np.bincount(np.asarray(train.labels), minlength=len(names))
        shown = ", ".join(f"{n} {k}" for n, k in zip(names[:most], counts[:most]))
        more = f", and {len(names) - most} more" if len(names) > most else ""
        text += f"; {len(names)} classes (train images: {shown}{more})"
    return text


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

    `strategy` and `data_override` = (train, test) ImageData let tests inject both. The run holds
    the workdir's lock (runtime/lock.py) throughout. SIGTERM or SIGINT stops it with Preempted:
    before training at once, during training after saving a checkpoint, after it at once (a
    rerun makes what is missing). A finished run (results.json at its last step, and the
    latent sampler and export it asks for) is left as it is.
    """
    config.validate()
    data.check_workdir(config, workdir)  # before the lock writes to it
    with cluster.StopSignals() as stop:
        strategy = strategy or cluster.create_strategy(config)
        with _workdir_lock(workdir, strategy):
            return _run(config, workdir, strategy, data_override, stop)


def _on_chief(strategy, function) -> None:
    """Run `function` on the chief; a ConfigError it raises stops every worker (through an
    all-gather: the others would otherwise wait for the chief forever)."""
    error = None
    if cluster.is_chief(strategy):
        try:
            function()
        except ConfigError as raised:
            error = raised
    if cluster.is_multi_worker(strategy) and any(cluster.all_workers(strategy, error is not None)):
        raise error or ConfigError("The chief refused to start (see its log); fix that, then "
                                   "start every worker again.")
    if error:
        raise error


@contextlib.contextmanager
def _workdir_lock(workdir: str, strategy):
    """The workdir's run lock, held by the chief for the whole cluster."""
    held = lock.RunLock(workdir, "--workdir") if cluster.is_chief(strategy) else None
    _on_chief(strategy, held.acquire if held else None)
    try:
        yield
    finally:
        if held:
            held.release()


def _start(config, workdir, strategy, image_shape, total_steps) -> dict:
    """The run's record (checkpoints.check_run_record), checked before anything is written:
    the export it will write must not be another run's (chief only). Then the record saved."""
    record = checkpoints.check_run_record(workdir, config, image_shape, write=False)

    def check_and_save():
        if config.export:
            saved_model.check_export_owner(
                os.path.join(_export_base(config, workdir), str(total_steps)), record)
        checkpoints.save_run_record(workdir, record)
    _on_chief(strategy, check_and_save)
    return record


def _run(config, workdir, strategy, data_override, stop) -> dict:
    """train_and_evaluate's body, inside the stop signals and the lock."""
    hardware.warn_if_slow_mixed_precision(config.mixed_precision)
    train, test = _load_data(config, data_override)
    _check_batch(config, strategy, train)
    steps_per_epoch = data.steps_per_epoch(train.num_examples, config.batch_size)
    total_steps = _total_steps(config, steps_per_epoch)
    record = _start(config, workdir, strategy, train.image_shape, total_steps)
    with strategy.scope():
        state = step_lib.create_state(config, train.image_shape, steps_per_epoch,
                                      config.epochs or -(-total_steps // steps_per_epoch),
                                      fast_layers.training_layers(config, defer_tuning=True))
    if summary := convs.tuning_summary():  # the conv forms found in the plan cache
        logging.info(summary)
    manager = checkpoints.create_manager(state.checkpoint(), workdir, config, strategy)
    checkpoints.restore_latest(manager, os.path.join(workdir, "checkpoints"))  # the chief's
    start = int(state.step.numpy())
    cluster.check_workers_agree(strategy, start)
    results = _finished_results(workdir, start, total_steps)
    if not results:
        logging.info("%s; %d steps/epoch, from step %d to %d on %d replica(s).",
                     describe_data(train, test), steps_per_epoch, start, total_steps,
                     strategy.num_replicas_in_sync)
        if start == 0 and config.encoder_pretrain_steps:  # a signal here stops it at once:
            _pretrain(config, state, strategy, train)  # nothing to save, a rerun redoes it
        iterator = iter(data.distribute(strategy, train, config.batch_size, config.seed, start))
        results = _train_then_test(config, state, strategy, iterator, manager, total_steps,
                                   make_test_set(state, test), stop, workdir)
    _after_training(stop, results["step"])
    if not _finish(config, state, strategy, workdir, train, results, record):
        logging.info("%s finished at step %d already: %s", workdir, start, results)
    return results


def _train_then_test(config, state, strategy, iterator, manager, total_steps, test_set, stop,
                     workdir) -> dict:
    """The loop (signals deferred to it) and the last checkpoint, then the test metrics and
    images, all logged to TensorBoard (the chief's); returns test and train metrics."""
    chief = cluster.is_chief(strategy)
    if chief:  # the run's hparams session, for TensorBoard's HParams tab
        tensorboard_logs.write_hparams(workdir, config)
    writer = tf.summary.create_file_writer(os.path.join(workdir, "train")) if chief else \
        tf.summary.create_noop_writer()
    try:
        with writer.as_default():
            with stop.deferred(), progress.progress_bar(
                    config.progress, int(state.step.numpy()), total_steps, chief) as show:
                train_metrics = _run_loop(config, state, strategy, iterator, manager,
                                          total_steps, test_set, stop, show)
                step = int(state.step.numpy())
                checkpoints.save(manager, step)  # a no-op when the loop saved this step
            _after_training(stop, step)
            signum = int(max(cluster.all_workers(strategy, stop.received)))
            if signum:  # received during the last steps: stop now
                raise Preempted(f"{signal.Signals(signum).name} {stop.when}", signum)
            results = test_set.metrics(config)
            for name, value in results.items():
                tf.summary.scalar(f"test/{name}", value, step=step)
            test_set.write_images(config, step, png_dir=workdir if chief else "")
    finally:
        writer.close()  # also after an error: no open file left in the workdir
    results.update({f"train_{k}": v for k, v in train_metrics.items()}, step=step)
    return results


def _after_training(stop, step: int) -> None:
    """What a signal says from now on: it stops the run at once (saved checkpoint: `step`)."""
    stop.when = (f"after training, while testing and exporting (checkpoint {step} is saved); "
                 "rerun the same command to finish.")


def _finished_results(workdir: str, start: int, total_steps: int) -> dict:
    """The results.json of a run whose training ended at `start` >= `total_steps`, else {}.

    Rerunning a finished run then rewrites nothing (its train losses are not recomputed).
    """
    path = os.path.join(workdir, "results.json")
    if start < total_steps or not tf.io.gfile.exists(path):
        return {}
    results = fileio.read_json(path)
    return results if results.get("step") == start else {}


def _export_base(config: Config, workdir: str) -> str:
    return config.export_dir or os.path.join(workdir, "export")


def _pretrain(config: Config, state: step_lib.TrainState, strategy, train) -> None:
    """The paper code's encoder pre-training, on batches of --encoder_pretrain_batch images (at
    most the split, a multiple of the replicas) in an order of their own (--seed + 1)."""
    replicas = strategy.num_replicas_in_sync
    batch = min(config.encoder_pretrain_batch, train.num_examples) // replicas * replicas
    iterator = iter(data.distribute(strategy, train, batch, config.seed + 1))
    losses = step_lib.pretrain_encoder(config, state, strategy, iterator)
    logging.info("Encoder pre-training: %d steps of %d images, moment loss %.4f -> %.4f.",
                 len(losses), batch, losses[0], losses[-1])


def training_codes(config: Config, encoder, train) -> np.ndarray:
    """The encoder's codes [n, z_dim] of a seeded subset of at most SAMPLER_FIT_LIMIT training
    images (in memory or streamed), encoded batch by batch: only the codes are kept."""
    encode = tf.function(lambda x: networks.encoder_mean(encoder, x), autograph=False,
                         reduce_retracing=True)
    subset = data.make_subset_dataset(train, SAMPLER_FIT_LIMIT, config.seed, config.batch_size)
    batches = [encode(images).numpy() for images in subset]
    if not batches:
        raise ConfigError(f"None of the training images chosen for the latent sampler could be "
                          f"decoded ({train.name}).")
    codes = np.concatenate(batches)
    expected = min(train.num_examples, SAMPLER_FIT_LIMIT)
    if len(codes) < expected:
        logging.warning("Left %d unreadable image files of the %d chosen out of the latent "
                        "sampler's fit.", expected - len(codes), expected)
    return codes


def fit_latent_sampler(config: Config, encoder, train, workdir: str, step: int):
    """The fitted latent sampler (--sampler_components): a Gaussian mixture of training_codes,
    saved as <workdir>/latent_sampler.FILE."""
    codes = training_codes(config, encoder, train)
    components = min(config.sampler_components, len(codes))  # a tiny split: fewer components
    mixture = latent_sampler.fit_gmm(codes, components, config.seed)
    log_likelihood = mixture.log_likelihood(codes)
    latent_sampler.save(mixture, os.path.join(workdir, latent_sampler.FILE), step=step,
                        num_codes=int(len(codes)), mean_log_likelihood=log_likelihood)
    logging.info("Fitted a %d-component Gaussian mixture to %d training codes (mean "
                 "log-likelihood %.3f).", components, len(codes), log_likelihood)
    return mixture


def _finish(config, state, strategy, workdir, train, results, record) -> list:
    """What a finished run keeps, each made unless there already: results.json, the fitted
    latent sampler (the chief's), the export; then the other workers' copies removed. A rerun
    after an interrupted finish so makes only what is missing. Returns the names of what it
    made."""
    step, chief, made = results["step"], cluster.is_chief(strategy), []
    if chief and not _finished_results(workdir, step, step):
        logging.info("Finished at step %d: %s", step, json.dumps(results))
        fileio.write_json(os.path.join(workdir, "results.json"), results)
        made.append("results")
    mixture = None
    if chief and config.sampler_components:
        mixture, fitted = _fitted_sampler(config, state.encoder, train, workdir, step)
        made += ["latent sampler"] if fitted else []
    export_base = _export_base(config, workdir)
    # Every worker takes part in saving: the chief's answer decides for all.
    missing = config.export and not (chief and saved_model.check_export_owner(
        os.path.join(export_base, str(step)), record))
    if all(cluster.all_workers(strategy, missing)):
        saved_model.export_saved_model(
            state.encoder, state.decoder, config, train.image_shape,
            cluster.write_dir(export_base, strategy), step, mixture,
            state.discriminator, record=record if chief else None)
        made.append("export")
    cluster.cleanup_worker_dirs([os.path.join(workdir, "checkpoints"), export_base], strategy)
    curves = plots.training_curves(workdir) if cluster.is_chief(strategy) else None
    if curves is not None:  # the losses, penalty and learning rate logged, against steps
        plots.save_png(curves, os.path.join(workdir, "training_curves.png"))
    return made


def _sampler_saved_at(workdir: str, step: int) -> bool:
    path = os.path.join(workdir, latent_sampler.FILE)
    return tf.io.gfile.exists(path) and fileio.read_json(path).get("step") == step


def _fitted_sampler(config, encoder, train, workdir, step):
    """(mixture, fitted now): the latent sampler saved at `step`, else one fitted now."""
    if _sampler_saved_at(workdir, step):
        return latent_sampler.maybe_load(os.path.join(workdir, latent_sampler.FILE)), False
    return fit_latent_sampler(config, encoder, train, workdir, step), True


def missing_outputs(config: Config, workdir: str, step: int) -> list:
    """What a run finished at `step` keeps (_finish) but `workdir` lacks, by name."""
    missing = [] if _finished_results(workdir, step, step) else ["results"]
    if config.sampler_components and not _sampler_saved_at(workdir, step):
        missing.append("latent sampler")
    version = os.path.join(_export_base(config, workdir), str(step))
    if config.export and not tf.io.gfile.exists(os.path.join(version, "saved_model.pb")):
        missing.append("export")
    return missing


def _call(train_fn, iterator, num: int) -> dict:
    """Run `num` compiled steps; their losses as floats. An image file that fails to decode
    while streaming becomes a ConfigError (the checkpoints on disk are untouched)."""
    try:
        return {k: float(v) for k, v in train_fn(iterator, tf.constant(num)).items()}
    except tf.errors.InvalidArgumentError as error:
        if "decode" not in str(error).lower() and "image" not in str(error).lower():
            raise
        raise ConfigError("An image file could not be decoded while streaming the training data "
                          f"({error_summary(error, 200)}). Pass --skip_bad_images to "
                          "check every file once and leave the bad ones out (--cache_dir keeps "
                          "the verdict and the pixels), or fix the files.") from None


def _layers_to_time(config, state, steps_left: int) -> list:
    """The conv layers --conv_impl=auto times after the first step (none in runs shorter than
    --conv_tune_min_steps: they keep the fixed rule), said in one line."""
    untimed = fast_layers.untimed(config, (state.encoder, state.decoder))
    if not untimed:
        return []
    if steps_left < config.conv_tune_min_steps:
        logging.info("Conv forms of %d layers: a fixed rule, untimed (%d steps left, "
                     "--conv_tune_min_steps=%d).", len(untimed), steps_left,
                     config.conv_tune_min_steps)
        return []
    logging.info("Conv forms of %d layers: timed after the first step (%d steps left), then "
                 "kept in the plan cache.", len(untimed), steps_left)
    return untimed


def _run_loop(config, state, strategy, iterator, manager, total_steps, test_set, stop,
              show_progress) -> dict:
    """Call the compiled steps until `total_steps`, logging, drawing and checkpointing;
    show_progress(step, losses) after each call (progress.progress_bar).

    After SIGTERM or SIGINT on any worker (`stop.received`, all-gathered between steps) it saves
    a checkpoint and raises Preempted.
    """
    train_fn = step_lib.make_train_fn(config, state, strategy)
    step, metrics = int(state.step.numpy()), {}
    first, window_start, window_step = step, time.time(), step
    to_time = _layers_to_time(config, state, total_steps - step)
    signums = [0]
    while step < total_steps:
        signums = cluster.all_workers(strategy, stop.received)
        if any(signums):
            break
        num = min(config.steps_per_loop, total_steps - step)
        metrics = _call(train_fn, iterator, num)
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
        if to_time and previous == first:  # after the first step, not before it
            changed = fast_layers.time_untimed(config, to_time, lambda: stop.received)
            if changed:
                train_fn = step_lib.make_train_fn(config, state, strategy)  # the new forms
            logging.info("%s%s", convs.tuning_summary(), f" {changed} changed form: the next "
                         "step traces them." if changed else "")
            window_start = time.time()
        if crossed(config.image_every):
            test_set.write_images(config, step)
        if crossed(config.checkpoint_every):
            checkpoints.save(manager, step)
        show_progress(step, metrics)  # floats already: no extra device sync
    if step < total_steps:  # stopped by a signal
        signum = int(max(signums))
        raise Preempted(f"{signal.Signals(signum).name} at step {step}: saved "
                        f"{checkpoints.save(manager, step)}; rerun the same command to resume.",
                        signum)
    return metrics
