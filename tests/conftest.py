"""Shared ground for the test suite: seeds, a clean param store, validation, device."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

# One intra-op thread, here and in the subprocesses tests start (CLI, notebooks): the suite's
# tensors are tiny, and torch's thread pool made each Pyro call several times slower on a busy
# 2-core machine (a diagnose run with NUTS: 132 s with 2 threads, 22 s with 1).
# PYRO_VAE_TEST_THREADS overrides it, e.g. for the CUDA run.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("PYRO_VAE_TEST_THREADS", "1"))

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TEST_DEVICE = os.environ.get("PYRO_VAE_TEST_DEVICE", "cpu")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    # the long campaigns run only when asked for by marker: pytest -m slow
    skip_slow = pytest.mark.skip(reason="slow: run with pytest -m slow")
    slow_asked = "slow" in (config.getoption("markexpr") or "")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        if "slow" in item.keywords and not slow_asked:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _pyro_ground():
    """Every test starts from seed 0, an empty param store and Pyro validation on."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def device() -> torch.device:
    """The device the suite runs on: `PYRO_VAE_TEST_DEVICE` (default cpu)."""
    if TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("PYRO_VAE_TEST_DEVICE asks for CUDA but none is available")
    return torch.device(TEST_DEVICE)


@pytest.fixture
def real_data_dir() -> Path:
    """Root of the real data sets (`$PYRO_VAE_DATA_DIR`, e.g. ../shared/data); skip if absent."""
    root = os.environ.get("PYRO_VAE_DATA_DIR")
    if not root or not Path(root).is_dir():
        pytest.skip("PYRO_VAE_DATA_DIR is not set to a folder with the real data sets")
    return Path(root)


def _run_cli(*args, cwd, check=True, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run ``pyro-vae ARGS`` (the console script, else ``python -m pyro_vae``) in ``cwd``.

    ``cwd`` is required, so that a command's files land in the test's own folder (the
    repository root works too: tests/test_install.py).
    ``check`` raises with stdout and stderr unless the exit status is 0.
    """
    script = shutil.which("pyro-vae")
    command = [script] if script else [sys.executable, "-m", "pyro_vae"]
    result = subprocess.run(
        [*command, *map(str, args)], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def run_cli():
    """The function that runs the ``pyro-vae`` command line in a subprocess (see _run_cli)."""
    return _run_cli
