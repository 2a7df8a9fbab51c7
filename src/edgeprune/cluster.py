"""Ray: edgeprune's independent runs as tasks on a local Ray instance or on an existing cluster.

``compare`` and ``sweep`` take ``--ray`` (start a local instance) or ``--ray ADDRESS`` (join a running
cluster, e.g. ``auto`` or ``ray://head:10001``), with ``--cpus-per-run`` and ``--gpus-per-run`` (a
reservation for Ray's scheduler: edgeprune trains on the CPU). Each run is one task that Ray retries
up to :data:`MAX_RETRIES` times when its worker dies (never for an error of the run itself); the
retry continues from the run's last checkpoint in ``--out``, which every node must see: it is
probed from every alive node before anything starts. Ray is optional: this module imports it only
when asked, and says how to install it when it is missing.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeprune.errors import EdgepruneError, first_line

RAY_HINT = "--ray needs Ray: pip install 'edgeprune[ray]'"
LOCAL = "local"  # --ray without an address: start a Ray instance on this machine
MAX_RETRIES = 3  # retries of a run whose worker (or node) died
CRASH_ENV = "EDGEPRUNE_TEST_CRASH_ONCE"  # test hook: the run of this tag exits once after its first checkpoint
PROBE = ".edgeprune-probe"
PROBE_TIMEOUT_S = 120
NOT_COMPARABLE = (
    "runs ran on {n} machines ({hosts}): their times and CPU figures were measured on different hardware "
    "and are not comparable with each other"
)


@dataclass(frozen=True)
class RayOptions:
    """Where the runs go (``local`` starts an instance here, else a cluster address) and what each run reserves."""

    address: str = LOCAL
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0

    def threads(self) -> int:
        """Threads a run uses when none are given: its CPUs, at least one."""
        return max(1, int(self.cpus_per_run))


def import_ray() -> ModuleType:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise EdgepruneError(RAY_HINT) from None
    return ray


@contextmanager
def connected(options: RayOptions) -> Iterator[ModuleType]:
    """Ray, connected: an instance this process already runs as it is, else one started or joined (and left after)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if options.address == LOCAL:
            ray.init(address="local", include_dashboard=False, logging_level="WARNING")
        else:
            ray.init(address=options.address, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EdgepruneError(f"--ray {options.address}: cannot start or join Ray ({first_line(e)})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def task(ray: ModuleType, fn: Callable, options: RayOptions) -> Any:
    """``fn`` as a Ray task with a run's resources, retried only when its worker dies."""
    return ray.remote(fn).options(
        num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=MAX_RETRIES, retry_exceptions=False
    )


def get(ray: ModuleType, ref: Any, what: str) -> Any:
    """``ray.get`` with one-line errors: a run's own EdgepruneError as it is, a lost worker or node named."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, EdgepruneError):
            raise EdgepruneError(str(cause)) from None
        raise  # a bug: keep the remote traceback
    except ray.exceptions.RayError as e:
        raise EdgepruneError(
            f"{what}: {type(e).__name__} after {MAX_RETRIES} retries ({first_line(e)}); the finished runs and "
            "checkpoints stay in --out: run again with --resume"
        ) from None


def node_info(in_ray: bool = False) -> dict:
    """The machine a run ran on: host name, and Ray's node id inside a Ray task."""
    node_id = None
    if in_ray:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    return {"hostname": socket.gethostname(), "ray_node_id": node_id}


def hosts(nodes: list[dict]) -> list[str]:
    """The distinct host names of run records' ``nodes``, in order of first appearance."""
    return list(dict.fromkeys(n["hostname"] for n in nodes))


def portable_ref(text: str) -> str:
    """A model argument a Ray worker elsewhere reads the same: folders and ``file:`` references made absolute."""
    from edgeprune.io import classify
    from edgeprune.refs import FILE

    parsed = classify(text)
    if parsed is None:
        return str(Path(text).resolve())
    return parsed.builder if parsed.kind == FILE else text


# -- the shared-storage probe ------------------------------------------------------------------


def probe_here(folder: str, token: str, name: str) -> str | None:
    """On one node: read the driver's probe file in ``folder``, write and read back this node's; None, or why not."""
    path = Path(folder)
    try:
        if (path / f"{PROBE}-{token}").read_text() != token:
            return "sees a different file at the same path"
        mine = path / f"{PROBE}-{token}-{name}"
        mine.write_text(name)
        return None if mine.read_text() == name else "cannot read back what it wrote"
    except FileNotFoundError:
        return "does not see the folder's files (not shared storage)"
    except OSError as e:
        return f"cannot use it ({e.strerror or e})"


def _probe_nodes(ray: ModuleType, folder: Path, token: str) -> dict[str, str | None]:
    """Run :func:`probe_here` on every alive node; host (node id) -> None or what went wrong."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(probe_here)
    refs = {}
    for n in nodes:
        label = f"{n.get('NodeManagerHostname', '?')} ({n['NodeID'][:12]})"
        where = NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
        on_node = probe.options(num_cpus=0, max_retries=0, scheduling_strategy=where)
        refs[label] = (n["NodeID"], on_node.remote(str(folder), token, n["NodeID"]))
    found: dict[str, str | None] = {}
    for label, (node_id, ref) in refs.items():
        try:
            found[label] = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            found[label] = f"did not answer in {PROBE_TIMEOUT_S} s"
        except ray.exceptions.RayError as e:
            found[label] = f"failed ({first_line(e)})"
        if found[label] is None and (folder / f"{PROBE}-{token}-{node_id}").read_text() != node_id:
            found[label] = "wrote a file this machine does not see"
    return found


def check_shared_folder(ray: ModuleType, folder: Path) -> None:
    """Refuse, in one line, unless every alive Ray node can read and write ``folder`` (shared storage)."""
    token = secrets.token_hex(8)
    mine = folder / f"{PROBE}-{token}"
    mine.write_text(token)
    try:
        found = _probe_nodes(ray, folder, token)
    finally:
        for p in folder.glob(f"{PROBE}-{token}*"):
            p.unlink(missing_ok=True)
    bad = [f"{label} {why}" for label, why in found.items() if why is not None]
    if bad:
        raise EdgepruneError(f"--out {folder} must be a folder every Ray node sees (shared storage): {'; '.join(bad)}")


# -- the test hook ------------------------------------------------------------------------------


def crash_hook(tag: str, out: Path, crash_once: str | None) -> Callable[[dict], None] | None:
    """For the run ``crash_once`` names: a training callback that ends the process after the first checkpoint, once.

    The marker file ``out/.crashed-once-TAG`` records that it did, so the run Ray retries continues instead of
    crashing again; the retry adds a line for each epoch it trains itself.
    """
    if crash_once != tag:
        return None
    marker = out / f".crashed-once-{tag}"

    def crash(record: dict) -> None:
        if not marker.exists():
            marker.write_text(f"exited after epoch {record['epoch']} ({socket.gethostname()}, pid {os.getpid()})\n")
            os._exit(1)
        with marker.open("a") as f:
            f.write(f"trained epoch {record['epoch']} ({socket.gethostname()}, pid {os.getpid()})\n")

    return crash


__all__ = [
    "CRASH_ENV",
    "LOCAL",
    "MAX_RETRIES",
    "RAY_HINT",
    "RayOptions",
    "check_shared_folder",
    "connected",
    "crash_hook",
    "get",
    "hosts",
    "import_ray",
    "node_info",
    "portable_ref",
    "probe_here",
    "task",
]
