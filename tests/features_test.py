"""The feature spaces of wae_tf.evaluation.features, offline: the Inception path on a stand-in
graph with the real one's tensor names and old batch-norm op (pixels, grayscale, batching, the
resize named); fetching it through a local HTTP server, its checksum checked, a wrong one refused,
the one-line message without network; --inception_path; SavedModel extractors; auto."""

import hashlib
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import inception_stand_in
from wae_tf.errors import ConfigError
from wae_tf.evaluation import features


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """The stand-in graph as a .pb and a .tgz (the real archive's layout) and its md5."""
    graph_def, weights, batchnorm = inception_stand_in()
    root = tmp_path_factory.mktemp("inception")
    payload = graph_def.SerializeToString()
    pb = root / features.INCEPTION_PB
    pb.write_bytes(payload)
    archive = root / "inception-2015-12-05.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in (("LICENSE", b"license"), (features.INCEPTION_PB, payload)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return dict(pb=str(pb), tgz=str(archive), md5=hashlib.md5(payload).hexdigest(),
                weights=weights, batchnorm=batchnorm)


@pytest.fixture
def server(stand_in, tmp_path):
    """A local HTTP server of a directory holding the stand-in .tgz; counts GET requests."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "inception-2015-12-05.tgz").write_bytes(open(stand_in["tgz"], "rb").read())
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield dict(url=f"http://127.0.0.1:{httpd.server_address[1]}/inception-2015-12-05.tgz",
               requests=requests)
    httpd.shutdown()
    httpd.server_close()


def test_inception_features_are_pool3_of_pixels_0_to_255_with_gray_repeated(stand_in):
    space = features.inception_space(stand_in["pb"], md5=stand_in["md5"])
    levels = np.array([0, 51, 128, 255], np.float32)
    gray = np.repeat(levels[:, None, None, None], 28, axis=1).repeat(28, axis=2) / 255.0
    got = space.embed(gray)  # [4, 28, 28, 1] -> [4, 2048]
    scaled = (levels[:, None] - 128.0) / 128.0 * np.ones(3)  # each level in R, G and B
    expected = stand_in["batchnorm"](scaled) @ stand_in["weights"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert got.shape == (4, 2048) and got.dtype == np.float32
    # Pixels are rounded to 8 bits first, as PNG files TTUR would read.
    np.testing.assert_array_equal(space.embed(gray + 0.4 / 255.0), got)


def test_inception_batches_and_repeats_grayscale_and_names_the_resize(stand_in):
    space = features.inception_space(stand_in["pb"], md5=stand_in["md5"])
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(7, 32, 32, 1)).astype(np.float32)
    one_by_one = np.concatenate([space.embed(images[i:i + 1]) for i in range(7)])
    batched = features.FeatureSpace(**{**space.__dict__, "batch": 3}).embed(images)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(space.embed(np.repeat(images, 3, axis=-1)), space.embed(images))
    described = space.describe(2048)
    assert described["name"] == "inception" and described["dim"] == 2048
    assert "TTUR: bilinear resize to 299x299 inside the graph" in described["preprocessing"]
    assert features.INCEPTION_URL in described["source"]


def test_the_graph_is_fetched_once_into_the_cache_and_checked(stand_in, server, tmp_path):
    cache = str(tmp_path / "cache")
    path = features.inception_graph_path(cache_dir=cache, url=server["url"], md5=stand_in["md5"])
    assert path == os.path.join(cache, features.INCEPTION_PB)
    assert open(path, "rb").read() == open(stand_in["pb"], "rb").read()
    assert os.listdir(cache) == [features.INCEPTION_PB]  # the .tgz and temporaries removed
    again = features.inception_graph_path(cache_dir=cache, url=server["url"],
                                          md5=stand_in["md5"])
    assert again == path and len(server["requests"]) == 1


def test_a_download_with_the_wrong_checksum_is_refused(stand_in, server, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ConfigError, match=f"has md5 {stand_in['md5']}, not 0123") as error:
        features.inception_graph_path(cache_dir=cache, url=server["url"], md5="0123" * 8)
    assert "refusing it" in str(error.value)
    assert os.listdir(cache) == []  # nothing half-trusted is left


def test_without_network_one_line_names_the_url_and_where_to_put_it(tmp_path):
    cache = str(tmp_path / "cache")
    url = "http://127.0.0.1:9/inception-2015-12-05.tgz"  # the discard port: refused
    with pytest.raises(ConfigError) as error:
        features.inception_graph_path(cache_dir=cache, url=url, md5="0" * 32)
    message = str(error.value)
    assert url in message and cache in message and "--inception_path" in message
    assert "\n" not in message


def test_inception_path_takes_the_pb_or_the_tgz_and_checks_both(stand_in, tmp_path):
    cache = str(tmp_path / "cache")
    assert features.inception_graph_path(stand_in["pb"], cache, md5=stand_in["md5"]) == \
        stand_in["pb"]
    from_tgz = features.inception_graph_path(stand_in["tgz"], cache, md5=stand_in["md5"])
    assert from_tgz == os.path.join(cache, features.INCEPTION_PB)
    for path in (stand_in["pb"], stand_in["tgz"]):
        with pytest.raises(ConfigError, match="refusing it"):
            features.inception_graph_path(path, str(tmp_path / "other"), md5="f" * 32)
    with pytest.raises(ConfigError, match="does not exist"):
        features.inception_graph_path(str(tmp_path / "missing.pb"), cache, md5="f" * 32)


def test_a_graph_without_the_tensors_is_refused():
    graph = tf.Graph()
    with graph.as_default():
        tf.constant(1.0, name="something_else")
    with pytest.raises(ConfigError, match="ExpandDims:0"):
        features.InceptionGraph(graph.as_graph_def())


class ConstantFeatures(tf.Module):
    """images [N, H, W, C] -> features [N, 4], all ones."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    def __call__(self, images):
        return tf.ones([tf.shape(images)[0], 4])


class MeanFeatures(tf.Module):
    """images -> {"features": per-channel means [N, C], "other": [N]}."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    def __call__(self, images):
        return {"features": tf.reduce_mean(images, axis=[1, 2]), "other": images[:, 0, 0, 0]}


def test_a_saved_model_by_signature_or_as_a_callable(tmp_path):
    module = MeanFeatures()
    with_signature, plain = str(tmp_path / "signature"), str(tmp_path / "plain")
    tf.saved_model.save(module, with_signature, signatures=module.__call__)
    tf.saved_model.save(ConstantFeatures(), plain, signatures={})
    images = np.random.default_rng(0).uniform(size=(5, 8, 8, 3)).astype(np.float32)
    space = features.saved_model_space(with_signature)
    np.testing.assert_allclose(space.embed(images), images.mean(axis=(1, 2)), rtol=1e-6)
    assert (space.name, space.source) == ("custom", with_signature)
    assert "serving_default" in space.preprocessing
    np.testing.assert_array_equal(features.saved_model_space(plain).embed(images),
                                  np.ones((5, 4)))
    with pytest.raises(ConfigError, match="no SavedModel"):
        features.saved_model_space(str(tmp_path))


def test_auto_is_the_classifier_with_labels_else_inception():
    assert features.space_name("auto", has_labels=True) == "classifier"
    assert features.space_name("auto", has_labels=False) == "inception"
    assert features.space_name("inception", has_labels=True) == "inception"
    assert features.space_name("/models/mine", has_labels=True) == "custom"
