"""The SavedModel contract: signatures, shapes, dtypes, determinism, loaded without wae_tf;
the .keras files beside it, loaded without wae_tf too."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import make_images, run_concurrently, tiny_config
from wae_tf import loop
from wae_tf.model import step as step_lib
from wae_tf.perf import fast_layers
from wae_tf.serving import saved_model

BIN = os.path.dirname(sys.executable)

# Runs in a fresh interpreter whose sys.path does not contain the repository.
CLIENT = r"""
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
sig = model.signatures
rng = np.random.default_rng(0)
images = tf.constant(rng.uniform(0, 1, (3, 28, 28, 1)).astype(np.float32))
enc = sig["encode"](images=images)
rec = sig["reconstruct"](images=images)
dec = sig["decode"](z=enc["z"])
s1 = sig["sample"](seed=tf.constant([1, 2, 1], tf.int64))["images"].numpy()
s2 = sig["sample"](seed=tf.constant([2], tf.int64))["images"].numpy()
errors = []
for bad in (images * 2.0, images * np.nan):
    try:
        sig["encode"](images=bad)
    except tf.errors.InvalidArgumentError as e:
        errors.append("[0, 1]" in str(e))
for shape in ([1, 32, 32, 1], [1, 28, 28, 3]):
    try:
        sig["reconstruct"](images=tf.zeros(shape))
    except tf.errors.InvalidArgumentError as e:
        errors.append("shape" in str(e))
    except (ValueError, TypeError):
        errors.append(True)
for fn, kwargs in ((sig["encode"], {"images": tf.cast(images, tf.float64)}),
                   (sig["decode"], {"z": tf.zeros([1, 4], tf.float16)}),
                   (sig["sample"], {"seed": tf.constant([1], tf.int32)})):
    try:
        fn(**kwargs)
    except tf.errors.InvalidArgumentError as e:  # "expected to be a float tensor but is a double"
        errors.append("expected to be a" in str(e))
print(json.dumps({
    "signatures": sorted(sig.keys()),
    "z": list(enc["z"].shape), "rec": list(rec["images"].shape), "dec": list(dec["images"].shape),
    "rec_z_equals_encode": bool(np.allclose(rec["z"], enc["z"])),
    "dec_equals_rec": bool(np.allclose(dec["images"], rec["images"], atol=1e-6)),
    "sample": list(s1.shape),
    # Equal up to float rounding (matmul blocking can depend on a row's place in the batch)...
    "same_seed_same_image": bool(np.allclose(s1[0], s1[2], atol=1e-6)),
    "same_seed_max_diff": float(np.max(np.abs(s1[0] - s1[2]))),
    # ...and bit for bit when the request is repeated.
    "repeat_is_identical": bool(np.array_equal(
        s1, sig["sample"](seed=tf.constant([1, 2, 1], tf.int64))["images"].numpy())),
    "seed_independent_of_batch": bool(np.allclose(s1[1], s2[0], atol=1e-6)),
    "other_seed_other_image": not bool(np.allclose(s1[0], s1[1])),
    "dtypes": [str(t.dtype) for t in (enc["z"], rec["images"], s1)],
    "in_range": bool(s1.min() >= 0 and s1.max() <= 1),
    "bad_inputs_rejected": errors,
    "wae_tf_imported": "wae_tf" in sys.modules}))
"""


# Runs in a fresh interpreter without wae_tf: each version's .keras files, its SavedModel's
# encode/decode signatures and TFSMLayer(call_endpoint="decode") in a Keras model, on the same
# inputs; the outputs go to an .npz for the test to compare.
KERAS_CLIENT = r"""
import json, os, sys
import keras
import numpy as np
import tensorflow as tf
inputs, out_path, versions = np.load(sys.argv[1]), sys.argv[2], sys.argv[3:]
images, z = inputs["images"], inputs["z"]
out, files = {}, {}
for i, version in enumerate(versions):
    keras_dir = os.path.join(version, "keras")
    files[i] = sorted(os.listdir(keras_dir))
    models = {f[:-len(".keras")]: keras.saving.load_model(os.path.join(keras_dir, f))
              for f in files[i]}
    codes = models["encoder"].predict(images, verbose=0)
    out[f"{i}/encoder"] = codes[0] if isinstance(codes, list) else codes  # Gaussian: the mean
    out[f"{i}/decoder"] = models["decoder"].predict(z, verbose=0)
    if "discriminator" in models:
        out[f"{i}/discriminator"] = models["discriminator"].predict(z, verbose=0)
    served = tf.saved_model.load(version).signatures
    out[f"{i}/encode"] = served["encode"](images=tf.constant(images))["z"].numpy()
    out[f"{i}/decode"] = served["decode"](z=tf.constant(z))["images"].numpy()
    z_in = keras.Input((z.shape[1],), name="z")
    decoded = keras.layers.TFSMLayer(version, call_endpoint="decode", trainable=False)(z_in)
    out[f"{i}/tfsm_decode"] = keras.Model(z_in, decoded["images"]).predict(z, verbose=0)
np.savez(out_path, **out)
print(json.dumps({"files": files, "wae_tf_imported": "wae_tf" in sys.modules}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    # The matmul forms of the stride-2 layers, whose custom gradient the export must not trip on.
    config = tiny_config(encoder="gaussian", conv_impl="patches")
    state = step_lib.create_state(config, (28, 28, 1), steps_per_epoch=1, num_epochs=1,
                                  layer_set=fast_layers.training_layers(config))
    base = str(tmp_path_factory.mktemp("export"))
    path = saved_model.export_saved_model(state.encoder, state.decoder, config, (28, 28, 1),
                                          base, 7)
    return base, path, state


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    """A WAE-GAN whose discriminator adds the prior's log-density (scale 2), trained 2 steps:
    the training run's export and one re-exported from its checkpoint."""
    root = tmp_path_factory.mktemp("gan")
    workdir = str(root / "run")
    config = tiny_config(regularizer="gan", disc_prior_logdensity=True, prior_scale=2.0,
                         export=True)
    loop.train_and_evaluate(config, workdir, data_override=(make_images(32),
                                                           make_images(16, seed=1)))
    again = saved_model.export_from_workdir(workdir, str(root / "again"))
    return dict(workdir=workdir, trained=os.path.join(workdir, "export", "2"), again=again)


@pytest.mark.slow
def test_export_writes_a_versioned_directory_atomically(exported):
    base, path, _ = exported
    assert path == os.path.join(base, "7")
    assert sorted(os.listdir(base)) == ["7"]  # no temporary directory left behind
    assert sorted(os.listdir(path)) == ["assets", "assets.extra", "fingerprint.pb", "keras",
                                        "saved_model.pb", "variables"]
    assert sorted(os.listdir(os.path.join(path, "assets.extra"))) == [
        "tf_serving_warmup_requests", "wae_config.json"]
    assert sorted(os.listdir(os.path.join(path, "keras"))) == ["decoder.keras", "encoder.keras"]
    with open(os.path.join(path, saved_model.CONFIG_ASSET)) as f:
        assert json.load(f)["encoder"] == "gaussian"


@pytest.mark.slow
def test_signatures_run_in_a_process_without_wae_tf(exported, tmp_path):
    _, path, _ = exported
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", CLIENT, path], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["signatures"] == ["decode", "encode", "reconstruct", "sample", "serving_default"]
    assert result["z"] == [3, 4] and result["rec"] == result["dec"] == [3, 28, 28, 1]
    assert result["sample"] == [3, 28, 28, 1]
    assert result["dtypes"] == ["<dtype: 'float32'>"] * 2 + ["float32"]
    for key in ("rec_z_equals_encode", "dec_equals_rec", "same_seed_same_image",
                "repeat_is_identical", "seed_independent_of_batch", "other_seed_other_image",
                "in_range"):
        assert result[key], key
    assert result["bad_inputs_rejected"] == [True] * 7  # range, NaN, 2 shapes, 3 dtypes
    assert not result["wae_tf_imported"]


@pytest.mark.slow
def test_saved_model_cli_shows_and_runs_the_signatures(exported, tmp_path):
    """saved_model_cli loads with the TF1 session loader, as TF Serving does."""
    _, path, _ = exported
    cli = os.path.join(BIN, "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # --all: every signature and the object graph's functions, beside the keras/ directory and
    # the warm-up file. The three commands are independent: run at once.
    inputs = {"decode": "z=[[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]", "sample": "seed=[3, 4]"}
    runs = {signature: [cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def",
                        signature, "--input_exprs", expr, "--outdir", str(tmp_path / signature)]
            for signature, expr in inputs.items()}
    results = run_concurrently({"show": [cli, "show", "--dir", path, "--all"], **runs}, env=env)
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    shown = results["show"].stdout
    for name in ("serving_default", "reconstruct", "encode", "decode", "sample"):
        assert f"signature_def['{name}']" in shown, name
    assert "DT_INT64" in shown and "(-1, 28, 28, 1)" in shown
    for signature in runs:
        images = np.load(tmp_path / signature / "images.npy")
        assert images.shape == (2, 28, 28, 1) and images.dtype == np.float32
        assert 0 <= images.min() and images.max() <= 1


def _op_counts(concrete_function) -> collections.Counter:
    graph = concrete_function.graph.as_graph_def()
    return collections.Counter([node.op for node in graph.node] + [
        node.op for function in graph.library.function for node in function.node_def])


def test_the_export_is_plain_keras_whatever_layers_training_used(exported):
    """Trained with every conv part as matmuls (--conv_impl=patches), served through TF's conv
    kernels: the graph is the same whatever CPU exported it, and computes the same images."""
    _, path, state = exported
    assert "TunedConv2D" in {type(layer).__name__ for layer in state.encoder.layers}
    loaded = tf.saved_model.load(path)
    ops = _op_counts(loaded.signatures["reconstruct"])
    # 4 convs; 2 transposed convs and the output layer; matmuls of the Dense layers only:
    # z_mean, z_log_var and the decoder's projection. No patches, no per-phase matmuls.
    assert (ops["Conv2D"], ops["Conv2DBackpropInput"], ops["MatMul"]) == (4, 3, 3), ops
    assert ops["ExtractImagePatches"] == 0
    images = tf.random.stateless_uniform([5, 28, 28, 1], seed=[1, 2])
    served = loaded.signatures["reconstruct"](images=images)
    z = state.encoder(images, training=False)[0]  # the Gaussian encoder's mean
    np.testing.assert_allclose(served["z"], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(served["images"], state.decoder(z, training=False), rtol=1e-5,
                               atol=1e-6)


def test_a_gaussian_export_encodes_the_log_variance_too(exported):
    """Q_Z of a Gaussian encoder is sampled from its mean and log-variance (evaluate's MMD)."""
    _, path, state = exported
    images = tf.random.stateless_uniform([3, 28, 28, 1], seed=[3, 4])
    served = tf.saved_model.load(path).signatures["encode"](images=images)
    np.testing.assert_allclose(served["z_log_var"], state.encoder(images, training=False)[1],
                               rtol=1e-5, atol=1e-6)


def test_a_symmetric_pixel_range_export_keeps_the_unit_range_contract(tmp_path):
    """Trained on [-1, 1] with a tanh output, served on [0, 1] in and out: the export maps."""
    config = tiny_config(pixel_range="symmetric")
    state = step_lib.create_state(config, (28, 28, 1), steps_per_epoch=1, num_epochs=1)
    path = saved_model.export_saved_model(state.encoder, state.decoder, config, (28, 28, 1),
                                      str(tmp_path), 1)
    signatures = tf.saved_model.load(path).signatures
    images = tf.random.stateless_uniform([4, 28, 28, 1], seed=[5, 6])
    served = signatures["reconstruct"](images=images)
    np.testing.assert_allclose(served["images"], state.decoder(state.encoder(images)), atol=1e-6)
    z = tf.random.stateless_normal([6, config.z_dim], seed=[7, 8], stddev=30.0)  # tanh saturates
    decoded = signatures["decode"](z=z)["images"].numpy()
    assert 0 <= decoded.min() < 0.1 and 0.9 < decoded.max() <= 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 1\]"):
        signatures["encode"](images=images * 2 - 1)  # [-1, 1] input is refused: the contract


CHECKS = {"images": lambda x: saved_model._check_images(x, [28, 28, 1]),  # pylint: disable=protected-access
          "z": lambda z: saved_model._check_z(z, 4),  # pylint: disable=protected-access
          "seed": saved_model._check_seed}  # pylint: disable=protected-access


@pytest.mark.parametrize("check,value,message", [
    ("images", tf.zeros([28, 28, 1]), r"images must have shape \[N, H, W, C\]"),
    ("images", tf.zeros([2, 28, 28]), r"images must have shape \[N, H, W, C\]"),
    ("images", tf.zeros([2, 28, 28, 3]), r"images must have shape \[N, H, W, C\]"),
    ("z", tf.zeros([2, 5]), r"z must have shape \[N, z_dim\]"),
    ("z", tf.zeros([4]), r"z must have shape \[N, z_dim\]"),
    ("seed", tf.zeros([2, 1], tf.int64), r"seed must have shape \[N\]"),
])
def test_wrong_shapes_get_a_message_naming_the_input(check, value, message):
    """As TF Serving feeds them: its C++ session does not check the signatures' static shapes,
    so the graph's own checks (traced here without a shape) must name the problem."""
    def checked_identity(x):
        with tf.control_dependencies([CHECKS[check](x)]):
            return tf.identity(x)
    unchecked = tf.function(checked_identity, autograph=False,
                            input_signature=[tf.TensorSpec(None, value.dtype)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message) as error:
        unchecked(value)
    assert "Incompatible shapes" not in str(error.value)
    good = {"images": [3, 28, 28, 1], "z": [3, 4], "seed": [3]}[check]
    unchecked(tf.zeros(good, value.dtype))  # passes


def test_a_failed_export_leaves_no_temporary_directory(exported, tmp_path, monkeypatch):
    """A full disk mid-save: a one-line ConfigError, and nothing where TF Serving looks."""
    _, _, state = exported

    def disk_full(module, path, signatures=None):
        del module, signatures
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(saved_model.ConfigError, match=r"Could not export to .*No space left"):
        saved_model.export_saved_model(state.encoder, state.decoder,
                                       tiny_config(encoder="gaussian"), (28, 28, 1),
                                       str(tmp_path), 3)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_keras_files_load_without_wae_tf_and_match_the_saved_model(exported, gan_run, tmp_path):
    """encoder/decoder.keras compute the served encode/decode; discriminator.keras (WAE-GAN)
    the trained discriminator's logits, prior log-density included, from the training run's
    export and from one re-exported from the checkpoint; TFSMLayer wraps the served decode."""
    _, gaussian, _ = exported
    versions = [gaussian, gan_run["trained"], gan_run["again"]]
    images = tf.random.stateless_uniform([5, 28, 28, 1], seed=[1, 2]).numpy()
    z = tf.random.stateless_normal([5, 4], seed=[3, 4], stddev=3.0).numpy()
    np.savez(tmp_path / "inputs.npz", images=images, z=z)
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", KERAS_CLIENT, str(tmp_path / "inputs.npz"),
         str(tmp_path / "out.npz"), *versions], cwd=str(tmp_path), env=env,
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert not summary["wae_tf_imported"]
    assert summary["files"] == {"0": ["decoder.keras", "encoder.keras"],
                                "1": ["decoder.keras", "discriminator.keras", "encoder.keras"],
                                "2": ["decoder.keras", "discriminator.keras", "encoder.keras"]}
    out = np.load(tmp_path / "out.npz")
    for i in range(len(versions)):
        np.testing.assert_allclose(out[f"{i}/encoder"], out[f"{i}/encode"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[f"{i}/decoder"], out[f"{i}/decode"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[f"{i}/tfsm_decode"], out[f"{i}/decode"], atol=1e-6)
    # The trained discriminator (NormalLogDensity), restored from the checkpoint in this process.
    logits = saved_model.restore_trained_models(gan_run["workdir"]).discriminator(z).numpy()
    assert logits.shape == (5, 1)
    for i in (1, 2):
        np.testing.assert_allclose(out[f"{i}/discriminator"], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_shared_export_dir_never_replaces_another_runs_version(tmp_path):
    """Two runs exporting into one --export_dir: the second is refused before it writes
    anything (its workdir is not even created); re-exporting the first run is fine."""
    shared, first, second = (str(tmp_path / name) for name in ("shared", "a", "b"))
    config = tiny_config(export=True, export_dir=shared)  # both end at step 2
    splits = (make_images(32), make_images(8))
    loop.train_and_evaluate(config.replace(seed=1), first, data_override=splits)
    asset = os.path.join(shared, "2", saved_model.CONFIG_ASSET)
    owner = json.load(open(asset))
    assert owner["workdir"] == first and owner["seed"] == 1
    with pytest.raises(saved_model.ConfigError) as refused:
        loop.train_and_evaluate(config.replace(seed=2), second, data_override=splits)
    assert str(refused.value) == (
        f"{shared}/2 holds the export of another run (run {owner['run_id']} in {first}); this "
        f"run ({second}) would replace it: pass another --export_dir, or delete {shared}/2 if "
        "that export is no longer wanted.")
    assert not os.path.exists(second)
    assert json.load(open(asset)) == owner
    assert saved_model.export_from_workdir(first) == os.path.join(shared, "2")
    assert json.load(open(asset))["run_id"] == owner["run_id"]
    assert sorted(os.listdir(shared)) == ["2"]


WRONG_SHAPES = [("sample", "seed", np.array([[1, 2], [3, 4]]), r"seed must have shape \[N\]"),
                ("sample", "seed", np.array(3), r"seed must have shape \[N\]"),
                ("encode", "images", np.zeros([28, 28, 1], np.float32),
                 r"images must have shape \[N, H, W, C\]"),
                ("reconstruct", "images", np.zeros([2, 28, 28], np.float32),
                 r"images must have shape \[N, H, W, C\]"),
                ("decode", "z", np.zeros([4], np.float32), r"z must have shape \[N, z_dim\]")]


def test_the_exported_signatures_name_a_wrong_rank_as_tf_serving_runs_them(exported):
    """TF folds tf.rank to the rank a signature declares: the checks must still see the rank
    of what is fed, through the loaded signatures and through a TF1 session that, as TF
    Serving's C++ one, does not compare feeds with the placeholders' shapes."""
    loaded = tf.saved_model.load(exported[1])
    for name, key, value, message in WRONG_SHAPES:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures[name](**{key: tf.constant(value)})
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        signature_defs = tf.compat.v1.saved_model.loader.load(
            session, ["serve"], exported[1]).signature_def
        for name, key, value, message in WRONG_SHAPES:
            inputs, outputs = signature_defs[name].inputs, signature_defs[name].outputs
            feed = graph.get_tensor_by_name(inputs[key].name)
            fetch = graph.get_tensor_by_name(next(iter(outputs.values())).name)
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                session._call_tf_sessionrun(  # pylint: disable=protected-access
                    None, {feed._as_tf_output(): value.astype(feed.dtype.as_numpy_dtype)},
                    [fetch._as_tf_output()], [], None)


def test_an_empty_batch_gets_empty_outputs(exported):
    signatures = tf.saved_model.load(exported[1]).signatures
    none = tf.zeros([0, 28, 28, 1])
    encoded = signatures["encode"](images=none)  # a Gaussian encoder: z and z_log_var
    assert {k: v.shape for k, v in encoded.items()} == {"z": (0, 4), "z_log_var": (0, 4)}
    rebuilt = signatures["reconstruct"](images=none)
    assert {k: v.shape for k, v in rebuilt.items()} == {"images": (0, 28, 28, 1), "z": (0, 4)}
    assert signatures["decode"](z=tf.zeros([0, 4]))["images"].shape == (0, 28, 28, 1)
    assert signatures["sample"](seed=tf.zeros([0], tf.int64))["images"].shape == (0, 28, 28, 1)
    # A batch of one is encoded alone, not with the blank image of an empty batch.
    one = tf.random.stateless_uniform([1, 28, 28, 1], seed=[1, 2])
    np.testing.assert_allclose(signatures["encode"](images=one)["z"],
                               signatures["encode"](images=tf.concat([one, one], 0))["z"][:1],
                               atol=1e-5)
