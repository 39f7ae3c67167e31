"""Every command over a table of bad inputs, as a user runs it (`python -m wae_tf.<name>`, and
the `wae-<name>` scripts): exit code 2, one line on stderr and no traceback, and the inputs
(workdir, export, images, output folder) left exactly as they were. An unexpected exception
is one line too, naming the command, its inputs and a log file with the traceback (exit 1)."""

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.conftest import REPO, tiny_config
from wae_tf import config as config_lib
from wae_tf.errors import ConfigError
from wae_tf.evaluation import evaluator
from wae_tf.model import step as step_lib
from wae_tf.runtime import checkpoints
from wae_tf.serving import encoding, rest_client, saved_model
from wae_tf.visualize import save_png


def _workdir(root, edit=None) -> str:
    """A tiny run's workdir (record, its copy, a checkpoint's index) with config.json edited."""
    workdir = os.path.join(root, "run")
    record = dict(config_lib.run_record(tiny_config(), (28, 28, 1)),
                  **config_lib.new_run_identity(workdir))
    os.makedirs(os.path.join(workdir, "checkpoints"))
    with open(os.path.join(workdir, checkpoints.RECORD_COPY), "w") as f:
        json.dump(record, f)
    open(os.path.join(workdir, "checkpoints", "ckpt-1.index"), "w").close()
    if edit:
        record = edit(dict(record))
    with open(os.path.join(workdir, checkpoints.RECORD_FILE), "w") as f:
        json.dump(record, f)
    return workdir


def _set(key, value):
    def edit(record):
        record[key] = value
        return record
    return edit


def _without(key):
    def edit(record):
        del record[key]
        return record
    return edit


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An untrained tiny export (version 1 under base/) and a folder of three PNGs."""
    root = tmp_path_factory.mktemp("bad_inputs_export")
    config = tiny_config()
    state = step_lib.create_state(config, (28, 28, 1), steps_per_epoch=1, num_epochs=1)
    base = str(root / "base")
    version = saved_model.export_saved_model(state.encoder, state.decoder, config, (28, 28, 1),
                                             base, 1)
    images = str(root / "images")
    os.makedirs(images)
    for i in range(3):
        save_png(os.path.join(images, f"{i}.png"), np.full((28, 28, 1), i / 3, np.float32))
    return dict(base=base, version=version, images=images)


def _broken_export(root, export, damage) -> str:
    path = os.path.join(root, "export")
    shutil.copytree(export["version"], path)
    damage(path)
    return path


def _no_variables(path):
    shutil.rmtree(os.path.join(path, "variables"))


def _garbage_graph(path):
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel")


# The served model's metadata: images [-1, 28, 28, 1].
_METADATA = {"metadata": {"signature_def": {"signature_def": {"reconstruct": {"inputs": {
    "images": {"tensor_shape": {"dim": [{"size": "-1"}, {"size": "28"}, {"size": "28"},
                                        {"size": "1"}]}}}}}}}}


class _Server(http.server.BaseHTTPRequestHandler):
    """A bad TF Serving, chosen by the model's name: `html` answers a web page, `shape` images
    of another size, `nan` NaN pixels."""

    def _answer(self, body: str, content_type="application/json"):
        payload = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # noqa: N802 (http.server's name)
        if "/models/html/" in self.path:
            return self._answer("<!DOCTYPE html><html><body>Welcome</body></html>", "text/html")
        return self._answer(json.dumps(_METADATA))

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        images = np.full((1, 28, 28, 1), 0.5)
        if "/models/shape:" in self.path:
            images = np.full((1, 14, 14, 1), 0.5)
        if "/models/nan:" in self.path:
            images[0, 3, 3, 0] = np.nan
        return self._answer(json.dumps({"outputs": {"images": images.tolist(),
                                                    "z": [[0.0] * 4]}}))

    def log_message(self, *args):  # quiet
        del args


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _reconstruct(model, image="ok", out="out.png", extra=()):
    """wae-reconstruct's arguments in `root` against the bad server (its URL filled in later)."""
    def args(root, export):
        path = os.path.join(export["images"], "0.png") if image == "ok" else \
            os.path.join(root, image)
        return [f"--image={path}", f"--out={os.path.join(root, out)}", "--server={server}",
                f"--model={model}", *extra], root
    return args


def _with_workdir(edit, *extra):
    def args(root, export):
        del export
        workdir = _workdir(root, edit)
        return [f"--workdir={workdir}", *extra], workdir
    return args


def _encode(damage=None, *extra, images=None):
    def args(root, export):
        model = _broken_export(root, export, damage) if damage else export["base"]
        folder = export["images"] if images is None else os.path.join(root, images)
        out = os.path.join(root, "out", "codes.npz")
        os.makedirs(os.path.dirname(out))
        return [f"--saved_model={model}", f"--images={folder}", f"--out={out}", *extra], root
    return args


def _streamed_folder_with_garbage(root, export):
    """train/ (24 PNGs and a file named .png that is not an image) and test/, streamed: the bad
    file is found inside a training step (a TensorFlow op error); the folder stays untouched."""
    del export
    images = os.path.join(root, "images")
    rng = np.random.default_rng(0)
    for split, num in (("train", 24), ("test", 8)):
        os.makedirs(os.path.join(images, split))
        for i in range(num):
            save_png(os.path.join(images, split, f"{i:02d}.png"),
                     rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with open(os.path.join(images, "train", "zz.png"), "w") as f:
        f.write("not an image")
    return ["--dataset=folder", f"--data_dir={images}", "--image_size=32", "--width_divisor=16",
            "--batch_size=8", "--train_steps=4", "--in_memory=false", "--export=false",
            "--verbosity=-1",  # warnings and errors only: the one line is all there is
            f"--workdir={os.path.join(root, 'run')}"], images


def _plain(*flags):
    def args(root, export):
        del export
        return [*flags], root
    return args


# name: (command, arguments (root, export) -> (argv, directory that must stay untouched),
#        the one line on stderr). Each starts a process, most importing TensorFlow (seconds):
#        one or two per kind of input here, the other variants in-process (LIBRARY_CASES).
CASES = {
    "train-list-for-a-number": ("train", _with_workdir(_set("z_dim", [1, 2])),
                                r"config.json: z_dim is \[1, 2\], not an integer"),
    "train-stray-argument": ("train", _with_workdir(None, "extra"),
                             r"Unexpected arguments: extra \(inputs are flags"),
    "train-bad-flag-value": ("train", _with_workdir(None, "--batch_size=abc"),
                             r"flag --batch_size=abc: invalid literal"),
    "train-undecodable-while-streaming": ("train", _streamed_folder_with_garbage,
                                          r"could not be decoded while streaming the training "
                                          r"data \(Unknown image file format"),
    "evaluate-null-for-a-number": ("evaluate", _with_workdir(_set("lambda_reg", None)),
                                   r"config.json: lambda_reg is null, not a number"),
    "export-no-image-shape": ("export", _with_workdir(_without("image_shape")),
                              r"config.json has no image_shape \(the \[height, width, channels\]"),
    "encode-garbage-graph": ("encode", _encode(_garbage_graph),
                             r"export is not a readable SavedModel \(Cannot parse file"),
    "encode-zero-batch": ("encode", _encode(None, "--batch_size=0"),
                          r"--batch_size must be positive, got 0"),
    "reconstruct-missing-image": ("reconstruct", _reconstruct("wae", image="missing.png"),
                                  r"--image=.*missing.png: No such file or directory"),
    "reconstruct-html-server": ("reconstruct", _reconstruct("html"),
                                r"answered '<!DOCTYPE html>.*not TensorFlow Serving's JSON"),
    "reconstruct-nan": ("reconstruct", _reconstruct("nan"),
                        r"answered 1 NaN or infinite pixel values.*nothing was written"),
    "benchmark-not-integers": ("benchmark", _plain("--width_divisors=4,x"),
                               r"--width_divisors takes comma-separated integers"),
    "benchmark-unknown-regularizer": ("benchmark", _plain("--regularizers=mmd,nope"),
                                      r"--regularizers takes mmd, gan, kl, swd"),
    "compare-not-integers": ("compare", lambda root, export: (
        [f"--workdir_root={root}/c", "--train_seeds=0,x"], root),
        r"--train_seeds takes comma-separated integers"),
    "compare-unknown-run": ("compare", lambda root, export: (
        [f"--workdir_root={root}/c", "--runs=nope"], root),
        r"--runs: 'nope' is not a run of --suite=fashion_mnist"),
    "fault_injection-negative-kills": ("fault_injection", lambda root, export: (
        [f"--workdir={root}/f", "--kills=-1"], root), r"--kills must be >= 0, got -1"),
    "fault_injection-too-short": ("fault_injection", lambda root, export: (
        [f"--workdir={root}/f", "--train_steps=5"], root),
        r"--train_steps=5 leaves no room for every interruption"),
}
# Run through the console script instead of `python -m`: the same line.
SCRIPTS = {"train-list-for-a-number", "reconstruct-nan", "encode-garbage-graph"}


def snapshot(directory: str) -> dict:
    """Every file and folder below `directory`: relative path -> (size, mtime in ns)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.lstat(path)
            found[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
    return found


def _environment() -> dict:
    """The test's environment as a user's: TensorFlow's own log level unset, so the commands
    quieten its start-up themselves (cli.import_tensorflow)."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def _command(name: str, script: bool) -> list:
    if script:
        return [os.path.join(os.path.dirname(sys.executable), f"wae-{name}")]
    return [sys.executable, "-m", f"wae_tf.{name}"]


def _stderr_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_is_one_line_exit_2_and_leaves_the_inputs_untouched(case, export, server,
                                                                        tmp_path):
    name, make_args, message = CASES[case]
    args, untouched = make_args(str(tmp_path), export)
    args = [a.replace("{server}", server) for a in args]
    before, export_before = snapshot(untouched), snapshot(os.path.dirname(export["base"]))
    result = subprocess.run(_command(name, case in SCRIPTS) + args, cwd=str(tmp_path),
                            env=_environment(), capture_output=True, text=True, timeout=300)
    lines = _stderr_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.match(rf"error: .*{message}", lines[0]), lines[0]
    assert snapshot(untouched) == before
    assert snapshot(os.path.dirname(export["base"])) == export_before


# Replaces export_from_workdir by a function that fails as a bug would, then runs wae-export.
_FAILING_EXPORT = """
import runpy, sys
from wae_tf import cli
tf = cli.import_tensorflow()
from wae_tf.serving import saved_model
def broken(workdir, export_dir):
    raise tf.errors.InvalidArgumentError(None, None, "Graph execution error:\\n\\nDetected at "
        "node x defined at (most recent call last):\\n<stack traces unavailable>\\nIncompatible "
        "shapes: [3] vs. [2]\\n\\t [[{{node x}}]] [Op:__inference_f_1]")
saved_model.export_from_workdir = broken
sys.argv = ["wae-export", *sys.argv[1:]]
runpy.run_module("wae_tf.export", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_an_unexpected_error_names_the_command_its_inputs_and_the_log(tmp_path):
    workdir = _workdir(str(tmp_path))
    before = snapshot(workdir)
    logs = os.path.join(os.environ["XDG_CACHE_HOME"], "wae_tf", "logs")
    result = subprocess.run([sys.executable, "-c", _FAILING_EXPORT, f"--workdir={workdir}"],
                            cwd=REPO, env=_environment(), capture_output=True, text=True,
                            timeout=300)
    lines = _stderr_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    match = re.fullmatch(
        rf"error: wae-export --workdir={re.escape(workdir)} failed unexpectedly "
        r"\(InvalidArgumentError: Incompatible shapes: \[3\] vs\. \[2\]\); the traceback is "
        rf"in ({re.escape(logs)}/wae-export-\d{{8}}-\d{{6}}-\d+\.log)\. Please report it\.",
        lines[0])
    assert match, lines[0]
    with open(match.group(1)) as f:
        log = f.read()
    assert "Traceback (most recent call last)" in log and "in broken" in log
    assert log.splitlines()[0] == f"wae-export --workdir={workdir}"  # the command as typed
    assert snapshot(workdir) == before


def _find_record(workdir, export, server):
    del export, server
    checkpoints.find_run_record(workdir)


def _encode_folder(damage=None, images=None):
    def run(root, export, server):
        del server
        model = _broken_export(root, export, damage) if damage else export["base"]
        folder = export["images"] if images is None else os.path.join(root, images)
        encoding.encode_folder(model, folder, os.path.join(root, "codes.npz"))
    return run


def _reconstruct_file(model, out="out.png", timeout=60.0):
    def run(root, export, server):
        rest_client.reconstruct_file(os.path.join(export["images"], "0.png"),
                                     os.path.join(root, out), server, model, timeout=timeout)
    return run


# The other variants, in this process: name -> (workdir's config.json edit or None,
# (root, export, server) -> raises, the ConfigError's message).
LIBRARY_CASES = {
    "string-for-a-number": (_set("batch_size", "abc"), _find_record,
                            r'config.json: batch_size is "abc", not an integer'),
    "record-not-an-object": (lambda record: [1, 2], _find_record,
                             r"config.json holds \[1, 2\], not an object of flag values"),
    "image-shape-of-two": (_set("image_shape", [28, 28]), _find_record,
                           r"config.json: image_shape is \[28, 28\], not the \[height"),
    "export-without-variables": (None, _encode_folder(_no_variables),
                                 r"export has no variables/ \(the trained weights\)"),
    "export-without-record": (None, _encode_folder(
        lambda path: os.remove(os.path.join(path, saved_model.CONFIG_ASSET))),
        r"export has no assets.extra/wae_config.json"),
    "evaluate-garbage-graph": (None, lambda root, export, server: evaluator.load_from_saved_model(
        _broken_export(root, export, _garbage_graph)), r"export is not a readable SavedModel"),
    "missing-images": (None, _encode_folder(images="nowhere"),
                       r"--images=.*nowhere is not a directory"),
    "out-in-missing-folder": (None, _reconstruct_file("wae", out="no/out.png"),
                              r"--out=.*no/out.png: the folder .*no does not exist"),
    "negative-timeout": (None, _reconstruct_file("wae", timeout=-1),
                         r"--timeout must be a positive number of seconds, got -1"),
    "served-html": (None, _reconstruct_file("html"),
                    r"answered '<!DOCTYPE html>.*not TensorFlow Serving's JSON"),
    "served-nan-pixels": (None, _reconstruct_file("nan"),
                          r"answered 1 NaN or infinite pixel values.*nothing was written"),
    "served-images-of-another-shape": (None, _reconstruct_file("shape"),
                                       r"answered images of shape \(1, 14, 14, 1\), not "
                                       r"\(1, 28, 28, 1\)"),
}


@pytest.mark.parametrize("case", sorted(LIBRARY_CASES))
def test_the_other_bad_inputs_are_config_errors_that_touch_nothing(case, export, server,
                                                                   tmp_path):
    edit, run, message = LIBRARY_CASES[case]
    workdir = _workdir(str(tmp_path), edit)
    before, export_before = snapshot(str(tmp_path)), snapshot(os.path.dirname(export["base"]))
    with pytest.raises(ConfigError, match=message):
        run(workdir if edit else str(tmp_path), export, server)
    damaged = os.path.join(str(tmp_path), "export")  # _broken_export's copy
    after = {k: v for k, v in snapshot(str(tmp_path)).items()
             if not os.path.join(str(tmp_path), k).startswith(damaged)}
    assert after == before
    assert snapshot(os.path.dirname(export["base"])) == export_before
