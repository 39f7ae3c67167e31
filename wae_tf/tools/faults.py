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
survived, steps recomputed, data lost = checkpointed steps not resumed from, must be 0). Then the
`scenarios`, each in a run of its own, in a second table (fault, expected, observed): SIGTERM and
SIGKILL during the final export, two runs sharing --export_dir, a deleted config.json, a second
trainer on a workdir in use and the stale lock its SIGKILL leaves, an image replaced and a bad
file fixed under --cache_dir. Exit code 0 when every check passes.
"""

import dataclasses
import glob
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from typing import Callable, Optional, Tuple

import numpy as np

from wae_tf.errors import ConfigError

# The checkout: the default --flagfile_train is relative to it.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    scenarios: bool = True  # the export window, a shared export dir, a lost config.json, the lock


@dataclasses.dataclass(frozen=True)
class Fault:
    """One interruption of the run."""
    name: str  # as in the table
    signum: int
    startup: bool = False  # a random moment before training, else after a random step
    damage: Optional[str] = None  # then "delete" or "empty" the checkpoint state file
    exit_codes: Tuple[int, ...] = ()  # what the interrupted process must exit with


def kill_if_running(process) -> None:
    """SIGKILL `process` (a subprocess.Popen) and reap it, unless it has exited."""
    if process.poll() is None:
        process.kill()
        process.wait()


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


def _start(options: Options, workdir: str, log_path: str, command=None) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log:
        # SIGINT as at a terminal, even if this process was started with it ignored.
        return subprocess.Popen(command or _train_command(options, workdir), cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT,
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
            deadline = time.time() + float(rng.uniform(2.0, 15.0))
            # At the latest at the first step: a fast machine would otherwise finish the run.
            while (time.time() < deadline and process.poll() is None
                   and _last_logged_step(log_path) < 0):
                time.sleep(0.02)
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
        kill_if_running(process)
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
        kill_if_running(process)
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


# ------------------------------------------------ scenarios: the export, shared paths, the lock


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A fault outside the interrupted run, checked by one function of (options, its own
    directory) that returns what it observed and whether that is what `expected` says."""
    name: str
    expected: str
    check: Callable[[Options, str], Tuple[str, bool]]


def _scenario_command(options: Options, workdir: str, *flags: str) -> list:
    return [sys.executable, "-m", "wae_tf.train", f"--flagfile={options.flagfile_train}",
            "--deterministic", "--log_every=1", "--image_every=1000000", f"--workdir={workdir}",
            *options.train_flag, *flags]


def _run_command(options: Options, command: list, log_path: str) -> int:
    process = _start(options, "", log_path, command)
    try:
        return process.wait(timeout=options.timeout)
    finally:
        kill_if_running(process)


def one_line(log_path: str) -> str:
    """The one `error: ` or `stopped: ` line a command printed; "" unless exactly one and no
    traceback."""
    text = _read(log_path)
    lines = [line for line in text.splitlines() if line.startswith(("error: ", "stopped: "))]
    return lines[0] if len(lines) == 1 and "Traceback" not in text else ""


def _wait_until(options: Options, process, predicate) -> bool:
    deadline = time.time() + options.timeout
    while not predicate():
        if process.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.005)
    return True


def _export_window(signum: int, codes: Tuple[int, ...]):
    """Interrupt the final export (as soon as its temporary directory appears), then rerun."""
    def check(options: Options, root: str) -> Tuple[str, bool]:
        workdir, flags = os.path.join(root, "run"), ("--train_steps=6", "--export=true")
        log = os.path.join(root, "interrupted.log")
        process = _start(options, workdir, log, _scenario_command(options, workdir, *flags))
        try:
            seen = _wait_until(options, process, lambda: glob.glob(
                os.path.join(workdir, "export", ".tmp-*")))
            process.send_signal(signum)
            code = process.wait(timeout=options.timeout)
        finally:
            kill_if_running(process)
        line = one_line(log)
        rerun = _run_command(options, _scenario_command(options, workdir, *flags),
                             os.path.join(root, "rerun.log"))
        export = os.path.join(workdir, "export")
        export = sorted(os.listdir(export)) if os.path.isdir(export) else []
        said = signum == signal.SIGKILL or line.startswith(
            "stopped: SIGTERM after training, while testing and exporting")
        observed = (f"exit {code}{' ' + repr(line[:60]) if line else ''}; rerun exit {rerun}, "
                    f"export/ holds {export}")
        return observed, seen and code in codes and said and rerun == 0 and export == ["6"]
    return check


def _record_of(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _shared_export_dir(options: Options, root: str) -> Tuple[str, bool]:
    """Two runs, one --export_dir: the second must be refused, the first's export kept."""
    shared = os.path.join(root, "shared")
    first, second = os.path.join(root, "a"), os.path.join(root, "b")
    code_a = _run_command(options, _scenario_command(options, first, "--seed=1",
                                                     f"--export_dir={shared}"),
                          os.path.join(root, "a.log"))
    asset = os.path.join(shared, "6", "assets.extra", "wae_config.json")
    owner = _record_of(asset).get("run_id") if os.path.exists(asset) else None
    code_b = _run_command(options, _scenario_command(options, second, "--seed=2",
                                                     f"--export_dir={shared}"),
                          os.path.join(root, "b.log"))
    line = one_line(os.path.join(root, "b.log"))
    kept = owner is not None and _record_of(asset).get("run_id") == owner
    observed = (f"exit {code_a}, then {code_b} {line[:60]!r}; the first's export kept: {kept}; "
                f"the second's workdir made: {os.path.exists(second)}")
    return observed, (code_a == 0 and code_b == 2 and "export of another run" in line and kept
                      and not os.path.exists(second))


def _lost_config(options: Options, root: str) -> Tuple[str, bool]:
    """config.json deleted: other flags refused without writing it; the bare command resumes
    with the run's own flags and restores it."""
    workdir = os.path.join(root, "run")
    record = os.path.join(workdir, "config.json")
    trained = _run_command(options, _scenario_command(options, workdir, "--export=false"),
                           os.path.join(root, "trained.log"))
    original = _record_of(record) if os.path.exists(record) else None
    if original:
        os.remove(record)
    log = os.path.join(root, "other_flags.log")
    changed = _run_command(options, _scenario_command(options, workdir, "--lambda_reg=5",
                                                      "--seed=7"), log)
    line, written = one_line(log), os.path.exists(record)
    bare = _run_command(options, [sys.executable, "-m", "wae_tf.train", f"--workdir={workdir}"],
                        os.path.join(root, "bare.log"))
    restored = os.path.exists(record) and _record_of(record) == original
    observed = (f"other flags: exit {changed} {line[:60]!r}, config.json written: {written}; "
                f"bare rerun: exit {bare}, config.json restored: {restored}")
    return observed, (trained == 0 and original is not None and changed == 2
                      and "trained with other flags" in line and not written and bare == 0
                      and restored)


def _second_trainer(options: Options, root: str) -> Tuple[str, bool]:
    """A second trainer while the first runs: refused naming it. The first SIGKILLed: its lock
    is stale, and the rerun takes it over and resumes."""
    workdir = os.path.join(root, "run")
    long_run = _scenario_command(options, workdir, "--export=false", "--train_steps=1000000",
                                 f"--checkpoint_every={options.checkpoint_every}")
    log = os.path.join(root, "first.log")
    first = _start(options, workdir, log, long_run)
    try:
        started = _wait_for_step(options, first, log, options.checkpoint_every + 1)
        second_log = os.path.join(root, "second.log")
        second = _run_command(options, long_run, second_log)
        line, alive = one_line(second_log), first.poll() is None
        first.kill()
        first.wait()
    finally:
        kill_if_running(first)
    saved = _checkpoint_step(workdir)
    rerun_log = os.path.join(root, "rerun.log")
    rerun = _run_command(options, _scenario_command(
        options, workdir, "--export=false", f"--train_steps={saved + 6}"), rerun_log)
    took_over = "Took over the stale lock" in _read(rerun_log)
    observed = (f"second: exit {second} {line[:60]!r}, first still running: {alive}; after "
                f"SIGKILL the rerun took over the lock: {took_over}, exit {rerun}, resumed "
                f"from {_resumed_step(rerun_log)}")
    return observed, (started and second == 2 and f"pid {first.pid} " in line and alive
                      and took_over and rerun == 0 and _resumed_step(rerun_log) == saved > 0)


def _png(value: int, size: int = 32) -> bytes:
    """A size x size grayscale PNG of one value (written by hand: this process loads no TF)."""
    raw = b"".join(b"\x00" + bytes([value]) * size for _ in range(size))  # filter 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _write_folder(root: str, value: int, train: int = 30, test: int = 6) -> str:
    """root/train and root/test of one-value PNGs (0.png, 1.png, ...): a --dataset=folder."""
    for split, count in (("train", train), ("test", test)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(count):
            with open(os.path.join(root, split, f"{i}.png"), "wb") as f:
                f.write(_png(value))
    return root


def _folder_command(options: Options, workdir: str, images: str, cache: str) -> list:
    """A 3-step run streaming `images` through its decoded copy in `cache`."""
    return _scenario_command(options, workdir, "--dataset=folder", f"--data_dir={images}",
                             "--image_size=32", "--in_memory=false", f"--cache_dir={cache}",
                             "--train_steps=3", "--export=false")


def _cache_rows(cache: str) -> Tuple[list, list]:
    """(the values of every decoded row byte, the manifests' kept counts) of a cache dir."""
    rows = [np.unique(np.fromfile(p, np.uint8)).tolist()
            for p in sorted(glob.glob(os.path.join(cache, "*.u8")))]
    return rows, [len(_record_of(p)["kept"]) for p in sorted(glob.glob(os.path.join(cache,
                                                                                   "*.json")))]


def _replaced_image(options: Options, root: str) -> Tuple[str, bool]:
    """Every image replaced under its name after a run filled --cache_dir: the next run must
    decode the new pixels, not read the old copy."""
    images, cache = _write_folder(os.path.join(root, "images"), 10), os.path.join(root, "cache")
    first = _run_command(options, _folder_command(options, os.path.join(root, "a"), images,
                                                  cache), os.path.join(root, "a.log"))
    before, _ = _cache_rows(cache)
    _write_folder(images, 200)
    log = os.path.join(root, "b.log")
    second = _run_command(options, _folder_command(options, os.path.join(root, "b"), images,
                                                   cache), log)
    after, _ = _cache_rows(cache)
    redone = "decoding them again" in _read(log)
    observed = (f"exit {first}, then {second}; cached pixel values {before} -> {after}; "
                f"logged the rebuild: {redone}")
    return observed, first == second == 0 and before == [[10]] and after == [[200]] and redone


def _fixed_bad_file(options: Options, root: str) -> Tuple[str, bool]:
    """A bad file under --cache_dir fixed as the error says: the rerun must accept it."""
    images, cache = _write_folder(os.path.join(root, "images"), 10), os.path.join(root, "cache")
    bad = os.path.join(images, "train", "bad.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG truncated")
    command = _folder_command(options, os.path.join(root, "run"), images, cache)
    refused = _run_command(options, command, os.path.join(root, "refused.log"))
    line = one_line(os.path.join(root, "refused.log"))
    with open(bad, "wb") as f:
        f.write(_png(99))
    rerun = _run_command(options, command, os.path.join(root, "rerun.log"))
    _, kept = _cache_rows(cache)
    observed = f"exit {refused} {line[:60]!r}; fixed, the rerun: exit {rerun}, cached {kept} files"
    return observed, (refused == 2 and "Cannot decode" in line and "bad.png" in line
                      and rerun == 0 and kept == [31])


def scenarios() -> list:
    """The faults checked outside the interrupted run, in order."""
    return [
        Scenario("SIGTERM during the export", "exit 143, one line 'stopped: SIGTERM after "
                 "training'; the rerun exports, no .tmp-*",
                 _export_window(signal.SIGTERM, (143,))),
        Scenario("SIGKILL during the export", "the rerun exports (results.json alone is not "
                 "done), no .tmp-*", _export_window(signal.SIGKILL, (-9,))),
        Scenario("shared --export_dir", "the second run refused in one line (exit 2) before "
                 "writing; the first's export kept", _shared_export_dir),
        Scenario("config.json deleted", "other flags refused (exit 2), nothing written; the bare "
                 "command resumes and restores it", _lost_config),
        Scenario("second trainer, then stale lock", "the second refused naming the first's "
                 "pid; after SIGKILL the rerun takes over the lock and resumes", _second_trainer),
        Scenario("image replaced under --cache_dir", "the next run decodes the new pixels (the "
                 "copy is rebuilt, the rebuild logged)", _replaced_image),
        Scenario("bad file fixed under --cache_dir", "refused naming it (exit 2); after the fix "
                 "the rerun trains on every file", _fixed_bad_file),
    ]


def _check_scenarios(options: Options) -> list:
    rows = []
    for i, scenario in enumerate(scenarios()):
        root = os.path.join(options.workdir, "scenarios", str(i))
        os.makedirs(root)
        observed, ok = scenario.check(options, root)
        print(f"{scenario.name}: {observed}")
        rows.append(dict(fault=scenario.name, expected=scenario.expected, observed=observed,
                         ok=ok))
    return rows


def scenario_table(rows) -> str:
    lines = ["| fault | expected | observed | ok |", "|---|---|---|---|"]
    lines += [f"| {r['fault']} | {r['expected']} | {r['observed']} | {'yes' if r['ok'] else 'NO'} |"
              for r in rows]
    return "\n".join(lines)


def check_options(options: Options) -> None:
    """ConfigError naming the flag the experiment cannot run with, before anything is written."""
    for name in ("checkpoint_every", "timeout"):
        if getattr(options, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(options, name)}.")
    if options.kills < 0:
        raise ConfigError(f"--kills must be >= 0, got {options.kills}.")
    needed = len(faults(options.kills, options.sigterm)) + 6  # one step each, past 1 and N-5
    if options.train_steps < needed:
        raise ConfigError(f"--train_steps={options.train_steps} leaves no room for every "
                          f"interruption: use at least {needed}.")


def run(options: Options) -> bool:
    """The whole experiment (see the module docstring); True when every check passed."""
    check_options(options)
    rng = np.random.default_rng(options.seed)
    reference_dir, killed_dir = (os.path.join(options.workdir, name)
                                 for name in ("reference", "killed"))
    for directory in (reference_dir, killed_dir, os.path.join(options.workdir, "full_disk"),
                      os.path.join(options.workdir, "scenarios")):
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
    scenario_rows = _check_scenarios(options) if options.scenarios else []
    if scenario_rows:
        print(scenario_table(scenario_rows))
    ok = ok and all(row["ok"] for row in scenario_rows)
    print(f"{'PASS' if ok else 'FAIL'} in {time.time() - start:.0f} s")
    with open(os.path.join(options.workdir, "fault_injection.json"), "w") as f:
        json.dump(dict(interruptions=interruptions, reference=reference, final=final,
                       full_disk=disk_row, scenarios=scenario_rows, ok=ok), f, indent=2)
    return ok
