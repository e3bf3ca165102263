"""Shared fixtures: the real CIFAR-10 used by data and training tests, and the scripts as modules.

Found at ``$BIONAS_DATA`` (torchvision's pickles or train/test image folders). Tests that need it
are skipped when it is absent -- unless ``BIONAS_REQUIRE_DATA=1`` (set by ``.ci/run``), where a
missing dataset fails the run instead of hiding tests.
"""
import os
from pathlib import Path

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:
    # the workers share the cores: one torch thread each (set before torch is imported), as
    # oversubscribed OpenMP threads slow torch several-fold
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cifar10_root() -> Path | None:
    candidate = os.environ.get("BIONAS_DATA")
    if candidate and any((Path(candidate) / sub).is_dir() for sub in ("train", "cifar-10-batches-py")):
        return Path(candidate)
    return None


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    root = _cifar10_root()
    if root is None:
        message = "real CIFAR-10 not found: set BIONAS_DATA to its directory"
        if os.environ.get("BIONAS_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def cifar10_small(cifar10_root):
    """A class-balanced real subset: 200 training and 50 test images per class."""
    from bionas.data import load_dataset

    return (load_dataset("cifar10", cifar10_root, "train", per_class=200, seed=0),
            load_dataset("cifar10", cifar10_root, "test", per_class=50, seed=0))


class Killed(Exception):
    """Stands for a run killed between two epochs."""


@pytest.fixture
def killed_after():
    """``killed_after(epoch)``: an ``on_epoch_end`` callback that kills the run after ``epoch``."""
    def make(last_epoch: int):
        def on_epoch_end(epoch: int) -> None:
            if epoch == last_epoch:
                raise Killed
        return on_epoch_end
    return make


@pytest.fixture
def load_script():
    """``load_script("name")``: the module ``scripts/name.py`` (scripts are not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
