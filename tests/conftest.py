"""Shared fixtures: small inputs and the path of the shipped mini data set."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One decode cache for the session, outside the user's home, so the mini set decodes once."""
    path = tmp_path_factory.getbasetemp() / "edgeprune-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def cache(shared_cache, monkeypatch):
    """Every test reads and writes the session's cache."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(shared_cache))
    return shared_cache


@pytest.fixture(autouse=True)
def trust_list(tmp_path_factory, monkeypatch):
    """Every test keeps its own trust list of user-code model references, never the user's real one."""
    path = tmp_path_factory.mktemp("edgeprune-config")
    monkeypatch.setenv("EDGEPRUNE_CONFIG", str(path))
    return path
