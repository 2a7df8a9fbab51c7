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
    _seed_granularity(path)
    return path


def _seed_granularity(path: Path) -> None:
    """`prune`'s default --round-to auto reads multiple 1 here: plans must not depend on this CPU's timings.

    (An AVX2 machine would measure 8 and an AVX-512 one 16; the choice itself is tested with injected timings in
    test_granularity.py.)
    """
    from edgeprune.files import write_json
    from edgeprune.granularity import CACHE_VERSION, cache_key, cache_path, probe_widths, runtime_version

    times = {str(w): 1e-4 * (1 + w) for w in probe_widths()}
    entry = {"multiple": 1, "reason": "the test suite's fixed choice", "times": times}
    entries = {
        cache_key(backend, runtime_version(backend), threads): entry
        for backend in ("torch", "onnxruntime")
        for threads in (1, 2)
    }
    write_json(cache_path(path), {"version": CACHE_VERSION, "entries": entries})


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
