"""A non-editable install used from the repository root.

There the source folder ``pyro_vae/`` (first on sys.path, as in every torchrun rank of
``python -m pyro_vae``) shadows the installed package and has no ``models``/``guides``
inside; ``pyro_vae/__init__.py`` then finds them in the top-level folders. The install is
built from a copy of the sources into a temporary target, so the shared environment and the
working tree are left alone.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_distributed import ONE_THREAD, TINY

REPO = Path(__file__).resolve().parents[1]
#: What setup.cfg builds the distribution from.
SOURCES = ("pyro_vae", "models", "guides", "setup.cfg", "pyproject.toml", "README.md")
#: Drops an editable install's finder (a development environment's), which would otherwise
#: find ``pyro_vae.models`` for the source tree itself and hide what this file tests.
HIDE_EDITABLE = """\
import sys

sys.meta_path[:] = [
    finder for finder in sys.meta_path
    if not getattr(finder, "__module__", "").startswith("__editable___pyro_vae")
]
"""


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a subprocess that sees a non-editable install of pyro-vae (built
    with pip, offline, without its dependencies) before the shared environment's."""
    tmp = tmp_path_factory.mktemp("install")
    source, target, hide = tmp / "source", tmp / "site", tmp / "hide"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(target),
         str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (target / "pyro_vae" / "guides" / "flows.py").is_file()
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_EDITABLE)
    return {**os.environ, **ONE_THREAD, "PYTHONPATH": os.pathsep.join([str(target), str(hide)])}


def python(*args, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


WHERE = (
    "import pyro_vae.guides.flows as flows, pyro_vae.models.priors as priors; "
    "print(flows.__file__, priors.__file__)"
)


def test_the_packages_import_from_the_source_tree_and_the_install_is_left_alone(
    installed_env, tmp_path
):
    from_root = python("-c", WHERE, cwd=REPO, env=installed_env).stdout.split()
    assert from_root == [str(REPO / "guides" / "flows.py"), str(REPO / "models" / "priors.py")]
    python("-c", "import pyro_vae.pairs", cwd=REPO, env=installed_env)
    elsewhere = python("-c", WHERE, cwd=tmp_path, env=installed_env).stdout.split()
    site = Path(installed_env["PYTHONPATH"].split(os.pathsep)[0])
    assert elsewhere == [str(site / "pyro_vae" / "guides" / "flows.py"),
                         str(site / "pyro_vae" / "models" / "priors.py")]  # fmt: skip
    # every subpackage made it into the install, and the command runs from it
    every = ("import pyro_vae.analysis.diagnose, pyro_vae.infer.compiled, pyro_vae.cli, "
             "pyro_vae.training.train; print(pyro_vae.cli.__file__)")  # fmt: skip
    cli = python("-c", every, cwd=tmp_path, env=installed_env).stdout.strip()
    assert cli == str(site / "pyro_vae" / "cli" / "__init__.py")
    python("-m", "pyro_vae", "list", cwd=tmp_path, env=installed_env)


def test_two_ranks_train_and_evaluate_from_the_repository_root(installed_env, tmp_path):
    run = tmp_path / "run"
    flags = [f for f in TINY]
    flags[flags.index("--train-limit") + 1] = "200"
    python("-m", "pyro_vae", "train", *flags, "--out", run, "--epochs", "1",
           "--nproc-per-node", "2", cwd=REPO, env=installed_env)  # fmt: skip
    shown = python("-m", "pyro_vae", "evaluate", run, "--nproc-per-node", "2", "--num-samples",
                   "5", "--limit", "20", "--json", cwd=REPO, env=installed_env)  # fmt: skip
    result = json.loads(shown.stdout.strip().splitlines()[-1])
    assert result["ranks"] == 2 and result["num_points"] == 20
    assert math.isfinite(result["log_px"]) and result["log_px"] < 0
