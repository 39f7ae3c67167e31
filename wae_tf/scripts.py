"""The console scripts of pyproject.toml: `wae-<name>` runs `python -m wae_tf.<name>`, as is.

Each entry point runs as `__main__` (runpy), as `python -m` runs it, so its absl flags belong to
the main module and `--help` lists them. Standard library only.
"""

import runpy


def _run(name: str) -> None:
    runpy.run_module(f"wae_tf.{name}", run_name="__main__", alter_sys=True)


def train() -> None:
    _run("train")


def evaluate() -> None:
    _run("evaluate")


def export() -> None:
    _run("export")


def encode() -> None:
    _run("encode")


def benchmark() -> None:
    _run("benchmark")


def compare() -> None:
    _run("compare")


def reconstruct() -> None:
    _run("reconstruct")
