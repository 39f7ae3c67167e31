"""The package's imports flow one way: each module imports on its own, and no cycle exists."""

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_concurrently

PACKAGE = os.path.join(REPO, "wae_tf")
MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE)
                 if name.endswith(".py") and name != "__init__.py")
# Modules that every other module may import: they import nothing but the standard library.
STDLIB_ONLY = ("config", "errors")


def _imports(module: str) -> set:
    """wae_tf modules that `module` imports (at the top or inside functions)."""
    with open(os.path.join(PACKAGE, f"{module}.py")) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "wae_tf":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wae_tf."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("wae_tf."))
    return found & set(MODULES)


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


def test_the_import_graph_has_no_cycle():
    graph = {module: _imports(module) for module in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    for module in STDLIB_ONLY:
        assert graph[module] <= set(STDLIB_ONLY), (module, graph[module])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_every_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module('wae_tf.' + name)\n")
    # Entry points define absl flags when imported: one interpreter each.
    entry_points = ("train", "export", "evaluate", "compare", "benchmark", "fault_injection",
                    "encode", "reconstruct")
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
