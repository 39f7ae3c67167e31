"""The package's imports flow one way: each module imports on its own, no cycle exists, and each
folder imports only the folders below it (the table LAYERS)."""

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_concurrently

PACKAGE = os.path.join(REPO, "wae_tf")
# The entry points: `python -m wae_tf.<name>`.
COMMANDS = ("train", "export", "evaluate", "compare", "benchmark", "fault_injection", "encode",
            "reconstruct")


def _modules() -> list:
    """Every module of the package, dotted below wae_tf ("loop", "model.step"), no __init__."""
    found = []
    for dirpath, _, names in os.walk(PACKAGE):
        rel = os.path.relpath(dirpath, PACKAGE)
        prefix = "" if rel == "." else rel.replace(os.sep, ".") + "."
        found += [prefix + n[:-3] for n in names if n.endswith(".py") and n != "__init__.py"]
    return sorted(found)


MODULES = _modules()
# Ground-floor modules that every other module may import: they import only the standard library.
STDLIB_ONLY = ("config", "errors")
# What each part of the package may import (besides itself and the ground floor). model/, data/
# and serving/ never import the CPU speed code (perf/) or the developer tools (tools/): the loop
# and the benchmark inject the fast layers.
GROUND = "ground"
LAYERS = {
    GROUND: set(),
    "model": set(),
    "data": set(),
    "runtime": set(),
    "perf": {"model"},
    "serving": {"model", "data", "runtime"},
    "evaluation": {"model", "data", "runtime", "serving"},
    "keras": {"model", "data", "runtime", "serving"},
    "loop": {"model", "data", "runtime", "perf", "serving", "evaluation", "keras"},
    "tools": {"model", "data", "runtime", "perf", "serving", "evaluation", "keras", "loop"},
    "commands": {"model", "data", "runtime", "perf", "serving", "evaluation", "keras", "loop",
                 "tools"},
}


def part(module: str) -> str:
    """The part of the package a module (or a folder) belongs to: a key of LAYERS."""
    if "." in module or module in LAYERS:
        return module.split(".")[0]
    if module in COMMANDS:
        return "commands"
    return "loop" if module == "loop" else GROUND


def _imports(module: str) -> set:
    """Package modules that `module` imports (at the top or inside functions); importing a
    package (`from wae_tf import data`) counts as importing its modules' part."""
    with open(os.path.join(PACKAGE, *module.split(".")) + ".py") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wae_tf"):
            base = node.module[len("wae_tf."):] if node.module != "wae_tf" else ""
            for alias in node.names:
                name = f"{base}.{alias.name}" if base else alias.name
                found.add(name if name in MODULES else base or name)
        elif isinstance(node, ast.Import):
            found.update(a.name[len("wae_tf."):] for a in node.names
                         if a.name.startswith("wae_tf."))
    parts = {m.split(".")[0] for m in MODULES if "." in m}
    return {m for m in found if m in MODULES or m in parts} - {module}


def _cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


@pytest.mark.slow
def test_the_import_graph_has_no_cycle():
    graph = {module: {m for m in _imports(module) if m in MODULES} for module in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    for module in STDLIB_ONLY:
        assert graph[module] <= set(STDLIB_ONLY), (module, graph[module])


def _wrong_imports(graph: dict) -> list:
    """The imports of `graph` (module -> modules it imports) that LAYERS does not allow."""
    wrong = []
    for module, imported in sorted(graph.items()):
        allowed = LAYERS[part(module)] | {part(module), GROUND}
        wrong += [f"{module} imports {m}" for m in sorted(imported) if part(m) not in allowed]
    return wrong


def test_each_part_imports_only_the_parts_below_it():
    graph = {module: _imports(module) for module in MODULES}
    assert "perf.fast_layers" in graph["loop"] and "data" in graph["loop"]
    assert not _wrong_imports(graph)


def test_the_layer_check_finds_an_import_running_up():
    assert _wrong_imports({"model.step": {"perf.fast_layers", "model.networks", "config"},
                           "serving.saved_model": {"tools.faults", "data"},
                           "loop": {"perf.convs"}, "train": {"tools.comparison"},
                           "runtime.cluster": {"serving"}}) == [
        "model.step imports perf.fast_layers", "runtime.cluster imports serving",
        "serving.saved_model imports tools.faults"]


def test_the_top_level_is_short():
    top = [n for n in os.listdir(PACKAGE) if n.endswith(".py")]
    assert len(top) <= 16, sorted(top)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module('wae_tf.' + name)\n")
    # Entry points define absl flags when imported: one interpreter each.
    entry_points = COMMANDS
    library = [m for m in MODULES if m not in entry_points]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    groups = [library] + [[m] for m in entry_points if m in MODULES]
    # The interpreters are independent: run at once.
    results = run_concurrently({i: [sys.executable, "-c", code, *group]
                                for i, group in enumerate(groups)}, cwd=REPO, env=env)
    for i, group in enumerate(groups):
        assert results[i].returncode == 0, (group, results[i].stderr[-2000:])


@pytest.mark.parametrize("module", ["config", "errors"])
def test_stdlib_only_modules_do_not_load_tensorflow(module):
    code = f"import sys, wae_tf.{module}; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_the_package_loads_tensorflow_only_when_wae_is_used():
    code = ("import sys, wae_tf\n"
            "print('tensorflow' in sys.modules, wae_tf.Config().z_dim)\n"
            "print(wae_tf.WAE.__module__, 'tensorflow' in sys.modules)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.split() == ["False", "8", "wae_tf.keras.wae_model", "True"]


@pytest.mark.slow
def test_importing_the_package_puts_tensorflow_tensors_in_its_pool_unless_told_not_to():
    # TF reports allocator stats only for its BFC pool: they show which allocator it took.
    # With oneDNN's custom ops on (TF's default on CPUs with AVX512_VNNI, AVX512_BF16 or AMX)
    # TF takes oneDNN's allocator, a pool too, whatever the variable says: test with them off.
    code = ("import sys, wae_tf, tensorflow as tf\n"
            "x = tf.ones([256, 256]) * 2\n"
            "try:\n"
            "    print(tf.config.experimental.get_memory_info('CPU:0')['peak'] > 0)\n"
            "except ValueError:\n"
            "    print('malloc')\n")
    env = {name: dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
           for name in ("default", "opt_out")}
    env["default"].pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    env["opt_out"]["TF_CPU_ALLOCATOR_USE_BFC"] = "false"
    results = {name: subprocess.run([sys.executable, "-c", code], cwd=REPO, env=e, text=True,
                                    capture_output=True, timeout=120, check=True).stdout.strip()
               for name, e in env.items()}
    assert results == {"default": "True", "opt_out": "malloc"}
