"""The console scripts of pyproject.toml: `wae-<name>` runs `python -m wae_tf.<name>`, as is.

Each entry point runs as `__main__` (runpy), as `python -m` runs it, so its absl flags belong to
the main module and `--help` lists them. Standard library only.
"""

import runpy

COMMANDS = ("train", "evaluate", "export", "encode", "benchmark", "compare", "reconstruct")


def _command(name: str):
    """The zero-argument function of `wae-<name>`."""
    def run() -> None:
        runpy.run_module(f"wae_tf.{name}", run_name="__main__", alter_sys=True)
    run.__name__ = run.__qualname__ = name
    return run


train, evaluate, export, encode, benchmark, compare, reconstruct = map(_command, COMMANDS)
