"""Fault injection: interrupt a training run in each of the ways below (kills, signals, a lost or
empty checkpoint state file, a full disk), resume it each time, and compare the end with a clean
run.

`run` (python -m wae_tf.fault_injection) runs `python -m wae_tf.train --deterministic` (a tiny
network on Fashion-MNIST by default) once uninterrupted and once interrupted by, in turn:
`--kills` SIGKILLs (each at a random step, a random fraction of a second after it was logged, so
also mid-checkpoint); SIGTERM and SIGINT during training (must save and exit 143 / 130); SIGTERM
and SIGINT during start-up (a random moment before training; must stop in one line); SIGKILL
followed by deleting, then emptying, the `checkpoint` state file (the rerun must recover from the
ckpt-*.index files). Each is followed by a resume; the final losses and every checkpointed value
(weights, optimizer slots, step) must equal the clean run's. A full disk is a separate run in a
small tmpfs (root only; else skipped with the reason): it must stop in one line with no partial
checkpoint, and resume from the intact one once there is space. Prints a table (fault, tries,
survived, steps recomputed, data lost = checkpointed steps not resumed from, must be 0). Exit code
0 when every check passes.
"""

import dataclasses
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Optional, Tuple

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
    full_disk: bool = True  # the full-disk run in a small tmpfs (root only)


@dataclasses.dataclass(frozen=True)
class Fault:
    """One interruption of the run."""
    name: str  # as in the table
    signum: int
    startup: bool = False  # a random moment before training, else after a random step
    damage: Optional[str] = None  # then "delete" or "empty" the checkpoint state file
    exit_codes: Tuple[int, ...] = ()  # what the interrupted process must exit with


def faults(kills: int, sigterm: bool = True) -> list:
    """The interruptions of one run, in order."""
    kill = Fault("SIGKILL", signal.SIGKILL, exit_codes=(-9,))
    found = [kill] * kills
    if sigterm:
        found.append(Fault("SIGTERM", signal.SIGTERM, exit_codes=(143,)))
    return found + [
        Fault("SIGINT", signal.SIGINT, exit_codes=(130,)),
        # Before wae_tf's handler is installed, SIGTERM's default ends the process (-15).
        Fault("SIGTERM during start-up", signal.SIGTERM, startup=True, exit_codes=(143, -15)),
        Fault("SIGINT during start-up", signal.SIGINT, startup=True, exit_codes=(130,)),
        Fault("state file deleted (after SIGKILL)", signal.SIGKILL, damage="delete",
              exit_codes=(-9,)),
        Fault("state file empty (after SIGKILL)", signal.SIGKILL, damage="empty",
              exit_codes=(-9,)),
    ]


def _train_command(options: Options, workdir: str) -> list:
    return [sys.executable, "-m", "wae_tf.train", f"--flagfile={options.flagfile_train}",
            f"--train_steps={options.train_steps}",
            f"--checkpoint_every={options.checkpoint_every}",
            "--log_every=1", "--image_every=1000000", "--export=false", "--deterministic",
            f"--workdir={workdir}", *options.train_flag]


def _start(options: Options, workdir: str, log_path: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log:
        # SIGINT as at a terminal, even if this process was started with it ignored.
        return subprocess.Popen(_train_command(options, workdir), cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


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


def _highest_index(workdir: str) -> int:
    """The highest N of the ckpt-N.index files (0 if none)."""
    names = glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.index"))
    return max([int(re.search(r"ckpt-(\d+)\.index$", n).group(1)) for n in names], default=0)


def _damage_state_file(workdir: str, damage: str) -> None:
    path = os.path.join(workdir, "checkpoints", "checkpoint")
    if damage == "delete" and os.path.exists(path):
        os.remove(path)
    elif damage == "empty":
        open(path, "w").close()  # pylint: disable=consider-using-with


def _wait_for_step(options: Options, process, log_path: str, step: int) -> bool:
    """Wait until the run logs `step` or later; False if it ended first."""
    deadline = time.time() + options.timeout
    while _last_logged_step(log_path) < step:
        if process.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def _interrupt(options: Options, workdir: str, log_path: str, rng, fault: Fault,
               target: int) -> dict:
    """Start (resume) the run and interrupt it by `fault`: a random moment of start-up, or a
    random delay after step `target`. What was seen."""
    process = _start(options, workdir, log_path)
    try:
        if fault.startup:  # start-up (imports, data, restore) usually outlasts this; see in_startup
            time.sleep(float(rng.uniform(2.0, 15.0)))
            in_startup = process.poll() is None and _last_logged_step(log_path) < 0
        else:
            if not _wait_for_step(options, process, log_path, 1):
                raise RuntimeError(f"training did not start: see {log_path}")
            _wait_for_step(options, process, log_path,
                           max(target, _resumed_step(log_path) + 1))
            time.sleep(float(rng.uniform(0.0, 0.3)))
            in_startup = False
        process.send_signal(fault.signum)
        code = process.wait(timeout=options.timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    on_disk = _checkpoint_step(workdir)
    if fault.damage:
        on_disk = _highest_index(workdir)  # what the rerun must find without the state file
        _damage_state_file(workdir, fault.damage)
    return dict(fault=fault.name, signal=signal.Signals(fault.signum).name,
                resumed_from=_resumed_step(log_path), in_startup=in_startup,
                killed_after_step=_last_logged_step(log_path), checkpoint_on_disk=on_disk,
                exit_code=code, exit_ok=code in fault.exit_codes,
                traceback="Traceback" in _read(log_path))


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


def _survived(record: dict, checkpoint_every: int) -> bool:
    """Stopped as it must, and the next run resumed from every checkpointed step."""
    ok = record["exit_ok"] and not record["traceback"] and record["lost"] == 0
    if record["signal"] in ("SIGTERM", "SIGINT") and not record["in_startup"]:
        ok = ok and record["checkpoint_on_disk"] >= record["killed_after_step"]  # saved its step
    return ok and 0 <= record["recomputed"] <= checkpoint_every


def _link_resumes(interruptions, final) -> None:
    """Each interruption's `resumed_next`: where the next run that got as far as restoring
    resumed (a run stopped during start-up may not have), and its derived figures."""
    runs = interruptions + [final]
    for i, record in enumerate(interruptions):
        record["resumed_next"] = next(r["resumed_from"] for r in runs[i + 1:]
                                      if r["resumed_from"] >= 0)
        record["recomputed"] = max(0, record["killed_after_step"] - record["resumed_next"])
        record["lost"] = max(0, record["checkpoint_on_disk"] - record["resumed_next"])


def table(rows) -> str:
    """The summary: one row per kind of fault."""
    lines = ["| fault | tries | survived | steps recomputed | data lost |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['fault']} | {row['tries']} | {row['survived']} | "
                     f"{row['recomputed']} | {row['lost']} |")
    return "\n".join(lines)


def _rows(interruptions, checkpoint_every: int) -> list:
    rows = {}
    for record in interruptions:
        row = rows.setdefault(record["fault"], dict(fault=record["fault"], tries=0, survived=0,
                                                    recomputed=[], lost=0))
        row["tries"] += 1
        row["survived"] += _survived(record, checkpoint_every)
        row["recomputed"].append(record["recomputed"])
        row["lost"] += record["lost"]
    for row in rows.values():
        row["recomputed"] = ", ".join(map(str, row["recomputed"]))
    return list(rows.values())


def _report(options: Options, interruptions, reference, final, weights, disk_row) -> bool:
    """Print the figures and the table; True when every check passed."""
    for i, r in enumerate(interruptions, 1):
        print(f"interruption {i}: {r['fault']} after step {r['killed_after_step']} (exit "
              f"{r['exit_code']}{', traceback' if r['traceback'] else ''}), checkpoint on disk: "
              f"step {r['checkpoint_on_disk']}, next run resumed from step {r['resumed_next']}")
    losses_equal = all(final[k] == reference[k] for k in reference if k.startswith(("train_",
                                                                                   "test_")))
    print(f"final step {final['step']} vs {reference['step']}; losses equal the uninterrupted "
          f"run's: {losses_equal} (train_loss {final['train_loss']!r} vs "
          f"{reference['train_loss']!r}); checkpointed values: {weights['values']}, max |diff| "
          f"{weights['max_abs_diff']:.3g}")
    rows = _rows(interruptions, options.checkpoint_every) + ([disk_row] if disk_row else [])
    print(table(rows))
    weights_ok = weights["same_names"] and weights["max_abs_diff"] == 0.0
    every_fault_survived = all(row["survived"] == row["tries"] and row["lost"] == 0
                               for row in rows)
    return (every_fault_survived and losses_equal and weights_ok
            and final["step"] == reference["step"])


def _mount_tmpfs(path: str, size: str, remount: bool = False) -> str:
    """Mount (or resize) a tmpfs at `path`; '' when done, else why not."""
    options = f"remount,size={size}" if remount else f"size={size}"
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                              capture_output=True, text=True, check=False, timeout=30)
    except OSError as error:
        return str(error)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def _full_disk(options: Options) -> dict:
    """Train in a tmpfs with room for one checkpoint: the save of the next must stop the run in
    one line (exit 2) with no partial checkpoint; with space again, the rerun resumes from the
    intact one. The table's row (survived 'skipped: <reason>' when no tmpfs can be mounted)."""
    workdir = os.path.join(options.workdir, "full_disk")
    os.makedirs(workdir)
    # One checkpoint of the tiny network is ~0.4 MB: the second does not fit.
    reason = _mount_tmpfs(workdir, "600k")
    row = dict(fault="full disk (tmpfs)", tries=1, survived=0, recomputed="-", lost=0)
    if reason:
        return dict(row, tries=0, survived=f"skipped: cannot mount a tmpfs ({reason})")
    try:
        log = os.path.join(options.workdir, "full_disk.0.log")
        process = _start(options, workdir, log)
        code = process.wait(timeout=options.timeout)
        text = _read(log)
        intact = _checkpoint_step(workdir)
        partial = [n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                   if "_temp" in n or n.startswith(f"ckpt-{intact + options.checkpoint_every}")]
        stopped_ok = (code == 2 and "Traceback" not in text and
                      "error: Could not save checkpoint" in text and not partial and intact > 0)
        failed_at = _last_logged_step(log)
        reason = _mount_tmpfs(workdir, "256m", remount=True)
        final_log = os.path.join(options.workdir, "full_disk.1.log")
        resumed_ok = not reason and _start(options, workdir, final_log).wait(
            timeout=options.timeout) == 0
        resumed = _resumed_step(final_log) if resumed_ok else -1
        print(f"full disk: exit {code} at step {failed_at}, intact checkpoint {intact}, partial "
              f"files {partial}, resumed from {resumed}")
        return dict(row, survived=int(stopped_ok and resumed == intact),
                    recomputed=str(max(0, failed_at - resumed)), lost=max(0, intact - resumed))
    finally:
        subprocess.run(["umount", "--lazy", workdir], check=False, capture_output=True)


def run(options: Options) -> bool:
    """The whole experiment (see the module docstring); True when every check passed."""
    rng = np.random.default_rng(options.seed)
    reference_dir, killed_dir = (os.path.join(options.workdir, name)
                                 for name in ("reference", "killed"))
    for directory in (reference_dir, killed_dir, os.path.join(options.workdir, "full_disk")):
        if os.path.exists(directory):
            raise ConfigError(f"{directory} exists: use a fresh --workdir.")
    for directory in (reference_dir, killed_dir):
        os.makedirs(directory)
    start = time.time()
    reference = _run_to_end(options, reference_dir,
                            os.path.join(options.workdir, "reference.log"))
    plan = faults(options.kills, options.sigterm)
    targets = iter(np.sort(rng.choice(np.arange(1, options.train_steps - 5), len(plan),
                                      replace=False)))
    interruptions = []
    for i, fault in enumerate(plan):
        log = os.path.join(options.workdir, f"killed.{i}.log")
        interruptions.append(_interrupt(options, killed_dir, log, rng, fault, int(next(targets))))
    final = _run_to_end(options, killed_dir, os.path.join(options.workdir, "killed.final.log"))
    _link_resumes(interruptions, final)
    disk_row = _full_disk(options) if options.full_disk else None
    ok = _report(options, interruptions, reference, final, _compare(reference_dir, killed_dir),
                 disk_row)
    print(f"{'PASS' if ok else 'FAIL'} in {time.time() - start:.0f} s")
    with open(os.path.join(options.workdir, "fault_injection.json"), "w") as f:
        json.dump(dict(interruptions=interruptions, reference=reference, final=final,
                       full_disk=disk_row, ok=ok), f, indent=2)
    return ok
