"""A TensorFlow Serving REST client: an image file -> its reconstruction PNG, over HTTP/JSON.

It asks the server for the model's metadata (GET /v1/models/<model>/metadata) to learn the image
shape of the `reconstruct` signature, prepares the file as training prepares a folder's files,
sends one columnar predict request (POST /v1/models/<model>:predict with {"signature_name",
"inputs"}) with the standard library's urllib, and writes the returned image as a PNG.
"""

import json
import os
import urllib.error
import urllib.request
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from wae_tf import data, visualize
from wae_tf.errors import ConfigError, error_summary

SIGNATURE = "reconstruct"


def model_url(server: str, model: str, version: str = "") -> str:
    """TF Serving's REST address of a model: <server>/v1/models/<model>[/versions/<version>]."""
    url = f"{server.rstrip('/')}/v1/models/{model}"
    return f"{url}/versions/{version}" if version else url


def call(url: str, body: Optional[dict] = None, timeout: float = 60.0) -> dict:
    """GET `url` (or POST `body` as JSON) and return the JSON answer; a refused request, an
    unreachable server or an answer that is not a JSON object (an HTML page: another server on
    the port) is a ConfigError with the server's own message."""
    payload = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=payload,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:  # TF Serving answers {"error": "..."}
        text = error.read().decode(errors="replace")
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        raise ConfigError(f"{url} answered HTTP {error.code}: {text}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(f"Cannot reach TensorFlow Serving at {url} ({reason}): start it "
                          "(README, Serving) or pass --server=http://HOST:8501.") from None
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        start = " ".join(text.split())[:60]
        raise ConfigError(f"{url} answered {start!r}, not TensorFlow Serving's JSON: is "
                          "--server TF Serving's REST port (8501)?")
    return answer


def image_shape(metadata: dict, signature: str = SIGNATURE) -> Tuple[int, int, int]:
    """[H, W, C] of the signature's `images` input in TF Serving's model metadata."""
    try:
        spec = metadata["metadata"]["signature_def"]["signature_def"][signature]
        dims = spec["inputs"]["images"]["tensor_shape"]["dim"]  # [batch, H, W, C]
        shape = tuple(int(dim["size"]) for dim in dims[1:])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"The served model has no {signature!r} signature with an `images` "
                          "input: is it a wae_tf export?") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"The {signature!r} signature's images have shape {shape}, not a "
                          "known [H, W, C]: is it a wae_tf export?")
    return shape


def read_image(path: str, shape: Tuple[int, int, int], crop: int = 0) -> np.ndarray:
    """An image file as float32 [H, W, C] in [0, 1] at `shape`: decoded, centre cropped (crop x
    crop; 0: the largest centred square) and resized, as training reads a folder's files."""
    data.check_image_file(path, "--image")  # a FIFO would block the read for ever
    with tf.io.gfile.GFile(path, "rb") as f:
        contents = f.read()
    if not contents:
        raise ConfigError(f"{path} is empty: pass a {', '.join(data.EXTENSIONS)} file.")
    try:
        image = data.preprocess(shape[0], shape[2], crop)(tf.constant(contents))
    except tf.errors.InvalidArgumentError as error:
        raise ConfigError(f"Cannot decode {path} as an image ({error_summary(error)}): "
                          f"pass a {', '.join(data.EXTENSIONS)} file.") from None
    return image.numpy().astype(np.float32) / 255.0


def reconstruct(image: np.ndarray, url: str, timeout: float = 60.0) -> np.ndarray:
    """The served reconstruction of one image [H, W, C] in [0, 1] (a batch of one); a
    ConfigError if the answer is not one finite image of that shape (NaN from a broken model,
    another model's shape)."""
    body = {"signature_name": SIGNATURE, "inputs": {"images": image[None].tolist()}}
    outputs = call(f"{url}:predict", body, timeout).get("outputs")
    if isinstance(outputs, dict):  # several named outputs; TF Serving leaves out a sole one's name
        outputs = outputs.get("images")
    if outputs is None:
        raise ConfigError(f"{url}:predict answered without the `images` output: is it a wae_tf "
                          "export?")
    try:
        images = np.asarray(outputs, np.float32)
    except (TypeError, ValueError):  # ragged lists, strings
        images = None
    if images is None or images.shape != (1, *image.shape):
        found = "values that are not an array" if images is None else f"shape {images.shape}"
        raise ConfigError(f"{url}:predict answered images of {found}, not {(1, *image.shape)} "
                          "(the model's metadata): is the served model the one asked for?")
    if not np.all(np.isfinite(images)):
        raise ConfigError(f"{url}:predict answered {np.sum(~np.isfinite(images))} NaN or "
                          "infinite pixel values: the served model is broken (trained into "
                          "NaN?); nothing was written.")
    return images[0]


def check_paths(image_path: str, out_path: str, timeout: float) -> None:
    """ConfigError naming the flag unless the image exists, the output's folder exists and the
    timeout is positive."""
    data.check_image_file(image_path, "--image")  # also a FIFO, which would block for ever
    folder = os.path.dirname(out_path) or "."
    if not tf.io.gfile.isdir(folder):
        raise ConfigError(f"--out={out_path}: the folder {folder} does not exist; create it or "
                          "name another.")
    if not timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}.")


def reconstruct_file(image_path: str, out_path: str, server: str, model: str,
                     version: str = "", crop: int = 0, timeout: float = 60.0) -> dict:
    """Write the served reconstruction of `image_path` to `out_path` (PNG); returns what was
    done, with the mean squared error per pixel between the prepared input and its
    reconstruction. Inputs are checked before the server is asked (check_paths)."""
    check_paths(image_path, out_path, timeout)
    url = model_url(server, model, version)
    shape = image_shape(call(f"{url}/metadata", timeout=timeout))
    image = read_image(image_path, shape, crop)
    reconstruction = reconstruct(image, url, timeout)
    visualize.save_png(out_path, reconstruction)
    return dict(out=out_path, model=url, image_shape=list(shape),
                mse_per_pixel=float(np.mean((reconstruction - image) ** 2)))
