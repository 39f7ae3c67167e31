"""Time to first step: how long `wae-train` takes from launch to its first training step on a
machine that has never timed its conv forms (an empty plan cache), and the steady speed the run
reaches afterwards, so a faster start is never bought with slower training.

Each case runs the training command three times in fresh workdirs, as subprocesses:
- `rule`: the empty cache and a short run (fewer steps than --conv_tune_min_steps): the fixed
  rule throughout, nothing timed;
- `timed`: the empty cache, --conv_tune_min_steps=0 (as a long run does): the forms are timed
  after the first step, then the step is traced again;
- `cached`: the cache that run filled: the timed forms from the first step on.
"""

import dataclasses
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

STEP_LINE = re.compile(r"\] step (\d+) .* (\d+) images/s")
TUNED_LINE = re.compile(r"timed (\d+) in ([\d.]+) s")


@dataclasses.dataclass(frozen=True)
class Case:
    """One training command to start: its name and flags (besides workdir and plan cache)."""
    name: str
    slug: str
    flags: Sequence[str]
    log_every: int
    windows: int  # log windows after the first step; the rate is the median of all but the first


def cases(folder: str, scale: float = 1.0) -> List[Case]:
    """The README's main command, and a 64x64 folder at width 4; `scale` multiplies the steps
    per log window (a few seconds each at 1)."""
    every = lambda steps: max(1, round(steps * scale))  # noqa: E731
    return [Case("main command (fashion_mnist_cpu)", "main", ("--experiment=fashion_mnist_cpu",),
                 every(50), 6),
            Case("64x64 folder, width 4", "folder64", (
                f"--data_dir={folder}", "--dataset=folder", "--image_size=64",
                "--width_divisor=4"), every(10), 5)]


@dataclasses.dataclass
class Start:
    """What one run's log showed: seconds from launch to the first step's line, seconds spent
    timing conv forms, and the images/s of the log windows after the first."""
    first_step_s: float
    tuning_s: float
    rates: List[float]

    @property
    def rate(self) -> float:
        steady = self.rates[1:] or self.rates  # the first window after step 1 holds a retrace
        return statistics.median(steady) if steady else float("nan")


def run_training(flags: Sequence[str], workdir: str, plan_cache: str, log_every: int,
                 windows: int, extra: Sequence[str] = ()) -> Start:
    """Launch `python -m wae_tf.train` and read its log as it comes; the training stops after
    `windows` windows of `log_every` steps past the first step."""
    command = [sys.executable, "-m", "wae_tf.train", *flags, f"--workdir={workdir}",
               f"--conv_plan_cache={plan_cache}", f"--train_steps={1 + windows * log_every}",
               f"--log_every={log_every}", "--image_every=1000000", "--export=false",
               "--sampler_components=0", "--progress=off", *extra]
    launched = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    first, tuning, rates, tail = None, 0.0, [], []
    for line in process.stderr:
        tail = (tail + [line])[-20:]
        if (match := STEP_LINE.search(line)) is not None:
            if first is None:
                first = time.perf_counter() - launched
            else:
                rates.append(float(match.group(2)))
        elif (match := TUNED_LINE.search(line)) is not None:
            tuning += float(match.group(2))
    if process.wait() != 0 or first is None:
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}):\n"
                           + "".join(tail))
    return Start(first, tuning, rates)


def measure(case: Case, root: str) -> Dict[str, Start]:
    """The rule, timed and cached runs of one case (see the module docstring)."""
    cache = os.path.join(root, f"{case.slug}-plans.json")
    run = lambda name, min_steps: run_training(  # noqa: E731
        case.flags, os.path.join(root, f"{case.slug}-{name}"), cache, case.log_every,
        case.windows, [f"--conv_tune_min_steps={min_steps}"])
    return {"rule": run("rule", 1_000_000), "timed": run("timed", 0),
            "cached": run("cached", 0)}


def format_table(results: Dict[str, Dict[str, Start]]) -> str:
    """One row per case and run: first step, timing, steady images/s and its ratio to `cached`."""
    rows = ["case                               run     first step s  timing s  images/s  "
            "vs cached"]
    for name, runs in results.items():
        for run, start in runs.items():
            ratio = start.rate / runs["cached"].rate
            rows.append(f"{name:34s} {run:7s} {start.first_step_s:12.1f} {start.tuning_s:9.1f} "
                        f"{start.rate:9.1f} {ratio:9.3f}")
    return "\n".join(rows)


def run(folder: str = "", scale: float = 1.0, only: Sequence[str] = ()) -> str:
    """Measure every case (or those whose slug is in `only`; a 64x64 folder of synthetic images
    is written to a temporary directory unless `folder` names one) and return the table."""
    with tempfile.TemporaryDirectory(prefix="wae_startup_") as root:
        if not folder:
            from wae_tf.tools import benchmarking  # pylint: disable=import-outside-toplevel
            folder = os.path.join(root, "images")
            benchmarking.write_synthetic_images(folder, 2000)
        results = {case.name: measure(case, root) for case in cases(folder, scale)
                   if not only or case.slug in only}
    return format_table(results)
