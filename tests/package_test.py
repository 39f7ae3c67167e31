"""pyproject.toml: console scripts for every entry point, dependency ranges that admit the pins of
requirements.txt, and the flagfiles an installed package carries."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import tomllib
from packaging.requirements import Requirement  # keras and tensorflow depend on it
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from wae_tf import cli, scripts
from wae_tf.errors import ConfigError
from wae_tf.tools import comparison

BIN = os.path.dirname(sys.executable)
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)
SCRIPTS = PYPROJECT["project"]["scripts"]
# A developer's tool of the checkout (it trains from flags/test_tiny.cfg in the repository).
NOT_A_SCRIPT = ("fault_injection",)


def _entry_point_modules() -> list:
    """The modules that `python -m wae_tf.<name>` runs: those calling absl's app.run."""
    package, names = os.path.join(REPO, "wae_tf"), []
    for name in sorted(n for n in os.listdir(package) if n.endswith(".py")):
        with open(os.path.join(package, name)) as f:
            if "app.run(main" in f.read():
                names.append(name[:-3])
    return names


def test_every_entry_point_has_a_console_script_that_runs_it_as_main(monkeypatch):
    modules = [m for m in _entry_point_modules() if m not in NOT_A_SCRIPT]
    assert sorted(SCRIPTS) == sorted(f"wae-{m}" for m in modules)
    calls = []
    monkeypatch.setattr(scripts.runpy, "run_module", lambda *a, **kw: calls.append((a, kw)))
    for script, target in SCRIPTS.items():
        module, function = target.split(":")
        assert module == "wae_tf.scripts", target
        getattr(scripts, function)()
        assert calls.pop() == ((f"wae_tf.{script[4:]}",),
                               dict(run_name="__main__", alter_sys=True)), script


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_installed_console_script_lists_its_flags(script, tmp_path):
    path = os.path.join(BIN, script)
    if not os.path.exists(path):
        pytest.skip(f"{script} is not installed in {BIN}: bash .ci/setup installs the project "
                    "(pip install -e . --no-deps).")
    module = script[4:]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([path, "--help"], cwd=str(tmp_path), env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]  # absl's --help exits with 1
    # The module's own flags, as `python -m wae_tf.<module> --help` lists them.
    listed = result.stdout.split(os.path.join("wae_tf", f"{module}.py:"), 1)
    assert len(listed) == 2 and re.search(r"^  --\w+", listed[1], re.M), result.stdout



def test_every_subpackage_ships_in_the_wheel():
    """pip installs the packages pyproject.toml lists: each folder of wae_tf must be one."""
    found = {"wae_tf.flags"}
    for dirpath, _, names in os.walk(os.path.join(REPO, "wae_tf")):
        if "__init__.py" in names:
            found.add(os.path.relpath(dirpath, REPO).replace(os.sep, "."))
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == sorted(found)

def _pins() -> dict:
    pins = {}
    with open(os.path.join(REPO, "requirements.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, version = line.split("==")
                pins[canonicalize_name(name)] = version
    return pins


def test_dependency_ranges_admit_the_pinned_versions_and_nothing_is_unpinned():
    project = PYPROJECT["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values()
                 for r in extra]
    ranges = {canonicalize_name(r.name): r.specifier for r in declared}
    pins = _pins()
    assert sorted(ranges) == sorted(pins), "pyproject.toml and requirements.txt name other packages"
    for name, version in pins.items():
        assert ranges[name].contains(version), f"{name}=={version} is outside {ranges[name]}"
    assert all(r.specifier for r in declared), "every dependency has a range"


def _installed_layout(root, with_flags: bool) -> str:
    """site-packages/wae_tf as pip installs it (a package without flags/ beside it); returns
    the path of its cli.py."""
    package = root / "site-packages" / "wae_tf"
    package.mkdir(parents=True)
    if with_flags:
        shutil.copytree(os.path.join(REPO, "flags"), package / "flags")
    return str(package / "cli.py")


def test_an_installed_package_reads_the_comparison_flagfiles_it_carries(tmp_path, monkeypatch):
    assert cli.flagfiles_dir() == os.path.join(REPO, "flags")  # the checkout's
    mapping = PYPROJECT["tool"]["setuptools"]
    assert mapping["package-dir"]["wae_tf.flags"] == "flags"
    assert mapping["package-data"]["wae_tf.flags"] == ["*.cfg"]
    monkeypatch.setattr(cli, "__file__", _installed_layout(tmp_path, with_flags=True))
    monkeypatch.chdir(tmp_path)  # no flags/ here: nested includes resolve from the package
    path = comparison.flagfile_path("vae_lambda01")
    assert path.startswith(str(tmp_path / "site-packages" / "wae_tf" / "flags"))
    # compare_vae_lambda01.cfg includes compare_vae.cfg, which includes compare_wae_mmd.cfg.
    config = comparison.parse_flagfile(path)
    assert (config.regularizer, config.recon, config.lambda_reg) == ("kl", "l2sq", 0.1)
    assert (config.width_divisor, config.train_steps) == (8, 600)
    assert os.getcwd() == str(tmp_path)


def test_a_package_without_flagfiles_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "__file__", _installed_layout(tmp_path, with_flags=False))
    with pytest.raises(ConfigError, match="reinstall wae-tf"):
        comparison.flagfile_path("wae_mmd")
