"""Fault injection: SIGKILL a training run at random moments, resume it, compare with a clean run.

`run` (python -m wae_tf.fault_injection) runs `python -m wae_tf.train --deterministic` (a tiny
network on Fashion-MNIST by default) once uninterrupted and once killed `--kills` times (each at a random step, a random fraction of a second
after it was logged, so also mid-checkpoint), plus one SIGTERM (preemption); each interruption is
followed by a resume. Prints, per interruption, where it was killed, the last checkpoint on disk
and where the rerun resumed, then whether the final losses and every checkpointed value (weights,
optimizer slots, step) equal the clean run's. Exit code 0 when every check passes.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Tuple

import numpy as np

from wae_tf.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_RE = re.compile(r"\] step (\d+) loss=")
RESUME_RE = re.compile(r"from step (\d+) to (\d+)")


@dataclasses.dataclass(frozen=True)
class Options:
    """What python -m wae_tf.fault_injection does (its flags)."""
    workdir: str  # scratch directory: reference/ and killed/ runs, logs, fault_injection.json
    kills: int = 5  # SIGKILLs of the run
    sigterm: bool = True  # one SIGTERM too (must save, exit 143)
    train_steps: int = 300
    checkpoint_every: int = 25
    seed: int = 0  # of the kill moments
    flagfile_train: str = "flags/test_tiny.cfg"
    train_flag: Tuple[str, ...] = ()  # extra flags of the training runs
    timeout: int = 600  # seconds allowed for each training process


def _train_command(options: Options, workdir: str) -> list:
    return [sys.executable, "-m", "wae_tf.train", f"--flagfile={options.flagfile_train}",
            f"--train_steps={options.train_steps}",
            f"--checkpoint_every={options.checkpoint_every}",
            "--log_every=1", "--image_every=1000000", "--export=false", "--deterministic",
            f"--workdir={workdir}", *options.train_flag]


def _start(options: Options, workdir: str, log_path: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log:
        return subprocess.Popen(_train_command(options, workdir), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _last_logged_step(log_path: str) -> int:
    steps = STEP_RE.findall(_read(log_path))
    return int(steps[-1]) if steps else -1


def _resumed_step(log_path: str) -> int:
    match = RESUME_RE.search(_read(log_path))
    return int(match.group(1)) if match else -1


def _checkpoint_step(workdir: str) -> int:
    """The step of the newest checkpoint the `checkpoint` state file lists (0 if none)."""
    path = os.path.join(workdir, "checkpoints", "checkpoint")
    if not os.path.exists(path):
        return 0
    match = re.search(r'^model_checkpoint_path: ".*ckpt-(\d+)"', _read(path), re.M)
    return int(match.group(1)) if match else 0


def _wait_for_step(options: Options, process, log_path: str, step: int) -> bool:
    """Wait until the run logs `step` or later; False if it ended first."""
    deadline = time.time() + options.timeout
    while _last_logged_step(log_path) < step:
        if process.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def _interrupt(options: Options, workdir: str, log_path: str, rng, sig, target: int) -> dict:
    """Start (resume) the run, send `sig` a random delay after step `target`; what was seen."""
    process = _start(options, workdir, log_path)
    try:
        if not _wait_for_step(options, process, log_path, 1):
            raise RuntimeError(f"training did not start: see {log_path}")
        resumed = _resumed_step(log_path)
        _wait_for_step(options, process, log_path, max(target, resumed + 1))
        time.sleep(float(rng.uniform(0.0, 0.3)))
        process.send_signal(sig)
        code = process.wait(timeout=options.timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return dict(signal=signal.Signals(sig).name, resumed_from=resumed,
                killed_after_step=_last_logged_step(log_path),
                checkpoint_on_disk=_checkpoint_step(workdir), exit_code=code)


def _run_to_end(options: Options, workdir: str, log_path: str) -> dict:
    process = _start(options, workdir, log_path)
    try:
        code = process.wait(timeout=options.timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0:
        raise RuntimeError(f"training failed ({code}): see {log_path}")
    with open(os.path.join(workdir, "results.json")) as f:
        return dict(json.load(f), resumed_from=_resumed_step(log_path))


def _checkpoint_values(workdir: str) -> dict:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel; only here
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    # save_counter counts saves, which differ by design; everything else must be equal.
    names = [n for n in reader.get_variable_to_shape_map()
             if "OBJECT_GRAPH" not in n and not n.startswith("save_counter")]
    return {name: reader.get_tensor(name) for name in names}


def _compare(reference_dir: str, killed_dir: str) -> dict:
    """Largest difference of any checkpointed value, and whether the key sets agree."""
    ref, killed = _checkpoint_values(reference_dir), _checkpoint_values(killed_dir)
    as_float = lambda value: np.asarray(value, np.float64)  # noqa: E731
    diffs = [float(np.max(np.abs(as_float(ref[k]) - as_float(killed[k])), initial=0.0))
             for k in ref if k in killed]
    return dict(values=len(ref), same_names=set(ref) == set(killed), max_abs_diff=max(diffs))


def _report(options: Options, interruptions, reference, final, weights) -> bool:
    """Print the figures; True when every check passed."""
    for i, record in enumerate(interruptions, 1):
        print(f"interruption {i}: {record['signal']} after step {record['killed_after_step']} "
              f"(exit {record['exit_code']}), checkpoint on disk: step "
              f"{record['checkpoint_on_disk']}, next run resumed from step "
              f"{record['resumed_next']}")
    resumed_ok = all(r["resumed_next"] == r["checkpoint_on_disk"] for r in interruptions)
    recomputed = [r["killed_after_step"] - r["resumed_next"] for r in interruptions
                  if r["signal"] == "SIGKILL"]
    sigterm_ok = all(r["exit_code"] == 143 and r["checkpoint_on_disk"] >= r["killed_after_step"]
                     for r in interruptions if r["signal"] == "SIGTERM")
    kills = sum(r["signal"] == "SIGKILL" for r in interruptions)
    losses_equal = all(final[k] == reference[k] for k in reference if k.startswith(("train_",
                                                                                   "test_")))
    print(f"kills survived: {kills}/{options.kills}; no progress lost beyond the last checkpoint "
          f"(every rerun resumed from the checkpoint on disk): {resumed_ok}; steps recomputed "
          f"after a kill (at most checkpoint_every={options.checkpoint_every}): {recomputed}; "
          f"SIGTERM saved its step: {sigterm_ok}")
    print(f"final step {final['step']} vs {reference['step']}; losses equal the uninterrupted "
          f"run's: {losses_equal} (train_loss {final['train_loss']!r} vs "
          f"{reference['train_loss']!r}); checkpointed values: {weights['values']}, max |diff| "
          f"{weights['max_abs_diff']:.3g}")
    recomputed_ok = all(0 <= r <= options.checkpoint_every for r in recomputed)
    weights_ok = weights["same_names"] and weights["max_abs_diff"] == 0.0
    return (resumed_ok and recomputed_ok and sigterm_ok and losses_equal and weights_ok
            and kills == options.kills and final["step"] == reference["step"])


def run(options: Options) -> bool:
    """The whole experiment (see the module docstring); True when every check passed."""
    rng = np.random.default_rng(options.seed)
    reference_dir, killed_dir = (os.path.join(options.workdir, name)
                                 for name in ("reference", "killed"))
    for directory in (reference_dir, killed_dir):
        if os.path.exists(directory):
            raise ConfigError(f"{directory} exists: use a fresh --workdir.")
        os.makedirs(directory)
    start = time.time()
    reference = _run_to_end(options, reference_dir,
                            os.path.join(options.workdir, "reference.log"))
    signals = [signal.SIGKILL] * options.kills + [signal.SIGTERM] * options.sigterm
    targets = np.sort(rng.choice(np.arange(1, options.train_steps - 5), len(signals),
                                 replace=False))
    interruptions = []
    for i, (sig, target) in enumerate(zip(signals, targets)):
        log = os.path.join(options.workdir, f"killed.{i}.log")
        interruptions.append(_interrupt(options, killed_dir, log, rng, sig, int(target)))
        if i:
            interruptions[i - 1]["resumed_next"] = interruptions[i]["resumed_from"]
    final = _run_to_end(options, killed_dir, os.path.join(options.workdir, "killed.final.log"))
    if interruptions:
        interruptions[-1]["resumed_next"] = final["resumed_from"]
    ok = _report(options, interruptions, reference, final, _compare(reference_dir, killed_dir))
    print(f"{'PASS' if ok else 'FAIL'} in {time.time() - start:.0f} s")
    with open(os.path.join(options.workdir, "fault_injection.json"), "w") as f:
        json.dump(dict(interruptions=interruptions, reference=reference, final=final, ok=ok), f,
                  indent=2)
    return ok
