"""The progress bar training shows on stderr: :class:`edgeprune.data.progress.Progress` (tqdm on a terminal)."""

from edgeprune.data.progress import Progress

__all__ = ["Progress"]
