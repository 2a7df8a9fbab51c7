"""Shared fixtures: small inputs and the path of the shipped mini data set."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # One shared extraction/decode cache per test session, outside the user's home.
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "edgeprune-cache"))
