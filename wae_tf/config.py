"""Every hyper-parameter of a run: one frozen dataclass, its defaults, its validation (stdlib)."""

import dataclasses
import json
import math
import os
import uuid
from typing import Tuple

from wae_tf.errors import ConfigError

# Choices of the enumerated fields; flags and validate() both read these.
CHOICES = {
    "encoder": ("deterministic", "gaussian"),
    "prior": ("normal", "sphere", "uniform"),
    "regularizer": ("mmd", "gan", "kl", "swd"),
    "kernel": ("imq", "rbf"),
    "recon": ("l2sq", "l2", "l1", "bernoulli"),
    "pixel_range": ("unit", "symmetric"),
    "lr_schedule": ("constant", "manual", "smooth"),
    "strategy": ("auto", "default", "mirrored", "multi_worker"),
    "mixed_precision": ("none", "mixed_float16", "mixed_bfloat16"),
    "conv_impl": ("auto", "rule", "native", "patches"),
    "in_memory": ("auto", "true", "false"),
    "progress": ("auto", "on", "off"),
}

# Fields that shape the models: a checkpoint made with other values cannot be restored.
MODEL_FIELDS = ("dataset", "image_size", "width_divisor", "encoder", "z_dim", "regularizer",
                "disc_prior_logdensity", "sync_batchnorm", "pixel_range", "prior")

# The fields that hold paths: their flags expand `~` and $VARIABLES (cli.PathParser).
PATH_FIELDS = ("data_dir", "cache_dir", "tfds_data_dir", "conv_plan_cache", "export_dir")

# Fields a resumed run may change: how long to train, how to run, log and save. Every other field
# changes what the checkpoints mean (the objective, the data, the random streams), so a resume with
# another value is refused (checkpoints.check_run_record). A longer --epochs also stretches a
# --lr_schedule=smooth schedule; that is the user's call.
RESUMABLE_FIELDS = ("train_steps", "epochs", "data_dir", "in_memory", "cache_dir",
                    "skip_bad_images", "tfds_data_dir", "tfds_download", "shuffle_buffer",
                    "steps_per_loop", "jit_compile", "conv_impl", "conv_plan_cache",
                    "conv_tune_min_steps", "deterministic", "strategy", "cpu_devices",
                    "cluster_timeout", "checkpoint_every", "keep_checkpoints",
                    "log_every", "progress", "image_every", "export_dir", "export",
                    "sampler_components", "fid_features", "inception_path", "stats_cache_dir")

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# The named feature spaces of --fid_features; any other value is a SavedModel's path.
FEATURE_SPACES = ("auto", "inception", "classifier")


def _field(default, help_text):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of one WAE experiment; `--flag` names equal field names."""

    # Data.
    dataset: str = _field("fashion_mnist", "fashion_mnist (Debian IDX files, else TFDS), mnist, "
                          "celeb_a, folder (your images in --data_dir) or any TFDS image data "
                          "set name.")
    data_dir: str = _field("", "fashion_mnist/mnist: the IDX files (*-idx?-ubyte[.gz]), default "
                           f"{DEFAULT_FASHION_MNIST_DIR} for fashion_mnist; folder: a directory "
                           "of JPEG/PNG/BMP/GIF files (train/ and test/ sub-folders, or split by "
                           "--test_fraction; sub-folders name classes); celeb_a: the official "
                           "img_align_celeba/ and list_eval_partition.txt (else TFDS).")
    test_fraction: float = _field(0.1, "folder without train/ and test/: the share of files held "
                                  "out for testing, chosen by a hash of (--seed, file path).")
    channels: int = _field(0, "folder: 1 (grayscale) or 3 (RGB), files converted to it; 0 = 1 "
                           "if the train split's first files are grayscale, else 3.")
    crop: int = _field(0, "folder: centre crop side before resizing to --image_size, at most "
                       "the images' smaller side; 0 = the largest centred square.")
    in_memory: str = _field("auto", "Hold the decoded train split in memory (true), or stream "
                            "it while training (false): folders and celeb_a from --data_dir from "
                            "their files, TFDS data sets from --cache_dir; auto streams when it "
                            "would take over a quarter of RAM.")
    cache_dir: str = _field("", "When streaming: a local directory for a decoded copy of the "
                            "train split, written once (again when a file's size or time "
                            "changes), so later epochs and runs skip decoding (required to stream "
                            "a TFDS data set).")
    skip_bad_images: bool = _field(False, "folder, celeb_a from --data_dir: leave out (and list "
                                   "in the log) files that cannot be read or decoded, instead of "
                                   "stopping; a stream without --cache_dir checks each once first.")
    tfds_data_dir: str = _field("", "tensorflow-datasets data_dir (prepared data sets live here).")
    tfds_download: bool = _field(True, "Let tensorflow-datasets download and prepare a missing "
                                       "data "
                                 "set (needs network); false: only use what --tfds_data_dir holds.")
    image_size: int = _field(0, "Side of the square images fed to the networks; 0 = the data set's "
                             "own (28 for MNIST-like, 64 for celeb_a).")
    celeba_crop: int = _field(140, "Centre crop side applied to CelebA before resizing (paper: "
                                   "140).")
    pixel_range: str = _field("unit", "The pixel range the networks and the cost work in: unit "
                              "[0, 1] with a sigmoid output, or symmetric [-1, 1] with a tanh "
                              "output (the paper's CelebA). Data, exports and metrics stay in "
                              "[0, 1]; the networks map in and out.")
    shuffle_buffer: int = _field(0, "Unused for in-memory data (full permutation per epoch); kept "
                                 "for streaming sources. 0 = full.")
    # Networks.
    width_divisor: int = _field(1, "Divides every channel count of the paper's networks "
                                "(CPU runs).")
    encoder: str = _field("deterministic",
                          "deterministic | gaussian (mean and log-variance heads).")
    z_dim: int = _field(8, "Latent dimension.")
    prior: str = _field("normal", "normal N(0, s^2 I) | sphere (radius s) | uniform "
                        "U[-s, s]^z_dim, with s = prior_scale; deterministic codes are projected "
                        "onto the sphere or box (as the paper's code).")
    prior_scale: float = _field(1.0, "Scale s of the prior (sigma_z for normal).")
    sync_batchnorm: bool = _field(True, "Synchronise BatchNorm statistics across replicas so that "
                                  "N replicas compute what 1 replica does.")
    batchnorm_momentum: float = _field(0.9, "BatchNorm moving-average momentum (paper's code and "
                                       "PyTorch: 0.9; Keras's default 0.99).")
    batchnorm_epsilon: float = _field(1e-5, "BatchNorm epsilon (paper's code and PyTorch: 1e-5; "
                                      "Keras's default 1e-3).")
    init_std: float = _field(0.0, "Weights initialised N(0, init_std^2), biases 0 (the paper's "
                             "code: 0.01); 0 = Keras's Glorot uniform.")
    disc_prior_logdensity: bool = _field(False, "Add the prior's log-density to the latent "
                                         "discriminator's logit (the paper code's CelebA trick).")
    # Objective.
    regularizer: str = _field("mmd", "mmd | gan | kl (VAE baseline) | swd (sliced Wasserstein).")
    lambda_reg: float = _field(10.0, "Weight lambda of the latent penalty D(Q_Z, P_Z).")
    kernel: str = _field("imq", "MMD kernel: imq | rbf.")
    rbf_sigma2: float = _field(0.0, "RBF bandwidth sigma^2; 0 = median heuristic per batch.")
    swd_projections: int = _field(50, "Number of random directions of the sliced Wasserstein "
                                      "distance.")
    recon: str = _field("l2sq", "Reconstruction cost: l2sq (0.05*||x-y||^2) | l2 (0.2*||x-y||) | "
                        "l1 (0.02*||x-y||_1), the paper code's scales, on --pixel_range pixels | "
                        "bernoulli (the negative log-likelihood of Bernoulli pixels, a VAE's "
                        "decoder; [-1, 1] pixels x stand for (x+1)/2, the tanh's G(z) for "
                        "(G(z)+1)/2).")
    # Optimisation.
    learning_rate: float = _field(1e-3, "Adam learning rate of encoder and decoder.")
    disc_learning_rate: float = _field(5e-4, "Adam learning rate of the latent discriminator "
                                       "(gan).")
    adam_beta1: float = _field(0.5, "Adam beta1 (paper: 0.5).")
    adam_beta2: float = _field(0.999, "Adam beta2.")
    lr_schedule: str = _field("constant", "constant | manual (x1/2 at epoch 30, x1/5 more at 50, "
                              "x1/10 more at 100) | smooth (100x lower by the last epoch).")
    batch_size: int = _field(100, "Global batch size (split across replicas).")
    epochs: int = _field(0, "Training length in epochs (used when train_steps is 0).")
    train_steps: int = _field(0, "Training length in steps; overrides epochs when > 0.")
    input_noise: float = _field(0.0, "Std of the Gaussian noise, truncated at 2 std, added to the "
                                "encoder's inputs in training, in --pixel_range units (the paper's "
                                "code: 0.01, `e_noise=add_noise`).")
    encoder_pretrain_steps: int = _field(0, "Before step 1 of a new run, Adam steps that match "
                                         "the codes' mean and covariance to the prior's (the "
                                         "paper's code: 200, stopping below a loss of 0.1).")
    encoder_pretrain_batch: int = _field(1000, "Images (and prior samples) per encoder "
                                         "pre-training step (the paper's code: 1000 MNIST, 256 "
                                         "CelebA).")
    seed: int = _field(0, "Seed of initialisation, data order, prior samples and noise.")
    steps_per_loop: int = _field(1, "Training steps run inside one tf.function call.")
    jit_compile: bool = _field(False, "XLA-compile the training step (slower on the CPUs "
                               "measured).")
    conv_impl: str = _field("auto", "How the stride-2 convs, transposed convs and the decoder's "
                            "output layer compute their forward pass and gradients: auto (TF's "
                            "kernels with a GPU; on CPUs a fixed rule (matmuls for convs to 2x2 "
                            "outputs, else TF's kernels) until each part has been timed as TF's "
                            "kernel, matmul, sub-pixel and Winograd forms on the layer's shapes: "
                            "after the first step in runs of --conv_tune_min_steps or more, then "
                            "kept in --conv_plan_cache for every later run; --deterministic keeps "
                            "the rule) | rule (that rule, never timed) | native (TF's kernels) | "
                            "patches (matmuls wherever there is a form). Same variables either "
                            "way.")
    conv_tune_min_steps: int = _field(1000, "With --conv_impl=auto: time the conv forms only in "
                                      "runs with at least this many steps left (timing costs "
                                      "50-150 steps' worth; the timed forms were 0-12% faster "
                                      "than the rule); 0 = in every run.")
    conv_plan_cache: str = _field("auto", "The JSON file that keeps --conv_impl=auto's timings "
                                  "across processes, reused on the same machine, TF and code "
                                  "(timing the 64x64 networks' layers takes minutes on a CPU): "
                                  "auto ($XDG_CACHE_HOME or ~/.cache, then "
                                  "wae_tf/conv_plans.json) | a path | '' (time in every process).")
    mixed_precision: str = _field("none", "none | mixed_float16 (with dynamic loss scaling) | "
                                  "mixed_bfloat16: layers compute in 16 bits, variables, losses "
                                  "and exported signatures stay float32. For GPUs/TPUs and CPUs "
                                  "with AVX512_BF16 (bfloat16 faster there); much slower on CPUs "
                                  "without 16-bit units (docs/performance.md).")
    deterministic: bool = _field(False, "Enable TF op determinism: a resumed run's losses equal "
                                 "an uninterrupted run's (bit for bit on one machine).")
    # Distribution.
    strategy: str = _field("auto", "auto (mirrored with >1 GPU) | default | mirrored | "
                                   "multi_worker.")
    cpu_devices: int = _field(0, "Split the CPU into this many logical devices (0 = leave as is).")
    cluster_timeout: float = _field(300.0, "multi_worker: seconds to wait for every task of "
                                    "TF_CONFIG to start before failing with the missing ones.")
    # Output.
    checkpoint_every: int = _field(1000, "Save a checkpoint every this many steps (and at the "
                                   "end).")
    keep_checkpoints: int = _field(3, "How many recent checkpoints to keep.")
    log_every: int = _field(100, "Log scalars to the console and TensorBoard every this many "
                            "steps.")
    progress: str = _field("auto", "A one-line progress bar with the time left on stderr, beside "
                           "the log lines: auto (when stderr is a terminal) | on | off.")
    image_every: int = _field(1000, "Log reconstruction and sample grids every this many steps.")
    export_dir: str = _field("", "Base directory of the SavedModel export; default "
                                 "<workdir>/export.")
    export: bool = _field(True, "Export a SavedModel at the end of training.")
    sampler_components: int = _field(10, "After training, fit a Gaussian mixture of this many "
                                     "full-covariance components to the training codes (a "
                                     "fitted latent sampler: the export's sample_fitted); 0 = "
                                     "none.")
    # Evaluation.
    fid_features: str = _field("auto", "The feature space of FID, KID, precision and recall: "
                               "inception (pool3 of the 2015-12-05 Inception graph as TTUR "
                               "computes it: the standard, comparable with published numbers; "
                               "fetched once, see --inception_path) | classifier (the 128-d "
                               "features of a small CNN trained on the data set's labels: fast "
                               "and offline, comparable only within wae_tf) | a SavedModel path "
                               "(float32 images [N, H, W, C] in [0, 1] -> features [N, D]) | "
                               "auto (classifier where the data set has class labels, else "
                               "inception). Metrics are named after the space: fid_inception, "
                               "kid_classifier, ...")
    inception_path: str = _field("", "The Inception graph for --fid_features=inception: "
                                 "classify_image_graph_def.pb or inception-2015-12-05.tgz, for "
                                 "machines without network; '' = fetch it once into "
                                 "$XDG_CACHE_HOME (or ~/.cache)/wae_tf/inception.")
    stats_cache_dir: str = _field("auto", "Where the test images' features and statistics "
                                  "are kept per (data, images, feature space), reused by later "
                                  "evaluations: auto ($XDG_CACHE_HOME or ~/.cache, then "
                                  "wae_tf/feature_stats) | a directory | '' (compute each time).")

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def pixel_scale(self) -> float:
        """Width of the networks' pixel range over that of [0, 1]: costs scale with it."""
        return 2.0 if self.pixel_range == "symmetric" else 1.0

    def model_signature(self) -> dict:
        """The fields that determine variable shapes, stored beside checkpoints."""
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    def validate(self) -> "Config":
        """Raise ConfigError naming the first wrong value and how to fix it; return self."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{field.name}={value} is not a finite number.")
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f"--{name}={value!r} is not one of {', '.join(choices)}.")
        positive = ("z_dim", "batch_size", "width_divisor", "checkpoint_every", "keep_checkpoints",
                    "log_every", "image_every", "swd_projections", "steps_per_loop", "celeba_crop",
                    "encoder_pretrain_batch")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}.")
        for name in ("learning_rate", "disc_learning_rate", "prior_scale", "cluster_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}.")
        for name in ("lambda_reg", "input_noise", "rbf_sigma2", "train_steps", "epochs",
                     "cpu_devices", "image_size", "init_std", "encoder_pretrain_steps",
                     "sampler_components", "conv_tune_min_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if not 0 < self.batchnorm_epsilon < 1:
            raise ConfigError(f"--batchnorm_epsilon must be in (0, 1), got "
                              f"{self.batchnorm_epsilon}.")
        for name in ("adam_beta1", "adam_beta2", "batchnorm_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.train_steps == 0 and self.epochs == 0:
            raise ConfigError("Set the training length: --train_steps=N or --epochs=N.")
        if self.regularizer == "kl" and self.encoder != "gaussian":
            raise ConfigError("--regularizer=kl (VAE) needs a stochastic encoder: add "
                              "--encoder=gaussian.")
        if self.regularizer == "kl" and self.prior != "normal":
            raise ConfigError("--regularizer=kl computes the KL to a normal prior: use "
                              "--prior=normal.")
        if self.encoder == "gaussian" and self.prior != "normal":
            raise ConfigError("--encoder=gaussian codes are unbounded: use --prior=normal (or a "
                              "deterministic encoder, projected onto the sphere or box).")
        if self.disc_prior_logdensity and self.prior != "normal":
            raise ConfigError("--disc_prior_logdensity needs --prior=normal.")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"--test_fraction must be in (0, 1), got {self.test_fraction}.")
        if self.channels not in (0, 1, 3):
            raise ConfigError("--channels must be 0 (from the files), 1 or 3, "
                              f"got {self.channels}.")
        if self.crop < 0:
            raise ConfigError(f"--crop must be >= 0, got {self.crop}.")
        if self.dataset == "folder" and not self.data_dir:
            raise ConfigError("--dataset=folder reads your images from --data_dir=DIR: pass it.")
        if self.image_size and self.image_size not in (28, 32, 64, 128, 256):
            raise ConfigError(f"--image_size={self.image_size}: the networks exist for 28 (MNIST) "
                              "and 32, 64, 128, 256 (0 = the data set's own).")
        if not self.fid_features:
            raise ConfigError(f"--fid_features is empty: use one of {', '.join(FEATURE_SPACES)} "
                              "or a SavedModel's path.")
        if self.lr_schedule != "constant" and self.epochs == 0:
            raise ConfigError(f"--lr_schedule={self.lr_schedule} is defined in epochs: set "
                              f"--epochs.")
        return self


def config_fields() -> Tuple[dataclasses.Field, ...]:
    return dataclasses.fields(Config)


def run_record(config: Config, image_shape) -> dict:
    """What a run writes once to <workdir>/config.json and into its export's assets.extra:
    every field, and the image shape [H, W, C] the networks were built for."""
    return dict(dataclasses.asdict(config), image_shape=[int(d) for d in image_shape])


# Keys of a run record that name the run rather than configure it: a fresh id per run and the
# workdir it started in (what refusals name). Records of older runs have neither.
RUN_IDENTITY = ("run_id", "workdir")


def new_run_identity(workdir: str) -> dict:
    """The identity keys of a run starting in `workdir`."""
    where = workdir if "://" in workdir else os.path.abspath(workdir)
    return dict(run_id=uuid.uuid4().hex[:16], workdir=where)


def same_run(record: dict, other: dict) -> bool:
    """Whether two run records (e.g. an export's and a workdir's) belong to one run: the same
    run id; for records without one, every field a resume may not change is equal."""
    if record.get("run_id") and other.get("run_id"):
        return record["run_id"] == other["run_id"]
    fixed = set(record) & set(other) - set(RESUMABLE_FIELDS) - set(RUN_IDENTITY)
    return bool(fixed) and all(record[k] == other[k] for k in fixed)


def from_dict(values: dict, source: str = "the run record") -> Config:
    """Build a Config from a dict (e.g. a run record), ignoring unknown keys; ConfigError naming
    `source` and the key for anything but an object of values of the fields' types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source} holds {_json_text(values)}, not an object of flag values: "
                          f"{_FIX_RECORD}")
    fields = {f.name: f for f in config_fields()}
    return Config(**{k: _typed(v, fields[k], source) for k, v in values.items() if k in fields})


# What to do about a damaged run record (config.json, its copy, an export's wae_config.json).
_FIX_RECORD = ("correct it, or restore it from a backup or a copy of the run's record "
               "(<workdir>/checkpoints/run_record.json, <export>/assets.extra/wae_config.json).")
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(value, field: dataclasses.Field, source: str):
    """`value` as the field's type (an int for a float field becomes a float); ConfigError
    naming `source` and the field otherwise (JSON's null, lists, strings for numbers, ...)."""
    kind = {"bool": bool, "int": int, "float": float, "str": str}.get(field.type, field.type)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{source}: {field.name} is {_json_text(value)}, not "
                          f"{_TYPE_NAMES.get(kind, kind)}: {_FIX_RECORD}")
    return value


def _json_text(value) -> str:
    """A JSON value as its file shows it, shortened: null, [1, 2], "abc"."""
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def record_image_shape(record: dict, source: str = "the run record") -> Tuple[int, int, int]:
    """The [H, W, C] a run record says its networks take; ConfigError naming `source` if it is
    missing or not three positive integers."""
    shape = record.get("image_shape") if isinstance(record, dict) else None
    if not (isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        what = "the [height, width, channels] the networks were built for"
        if shape is None:
            raise ConfigError(f"{source} has no image_shape ({what}): {_FIX_RECORD}")
        raise ConfigError(f"{source}: image_shape is {_json_text(shape)}, not {what}: "
                          f"{_FIX_RECORD}")
    return tuple(shape)


def check_record(record, source: str) -> dict:
    """`record` if a Config and an image shape can be built from it; ConfigError naming
    `source` and what is wrong otherwise (see from_dict, record_image_shape)."""
    from_dict(record, source)
    record_image_shape(record, source)
    return record
