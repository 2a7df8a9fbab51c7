"""What several test files share: the CLI runner, one-line error checks, small synthetic data sets and models.

conftest.py puts tests/ on the path: ``from helpers import run_cli``.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import edgeprune
from edgeprune.data import ImageDataset, channel_stats
from edgeprune.errors import EdgepruneError

# -- the command line --------------------------------------------------------------------------------------------


def run_cli(capsys, *argv, catch_exit: bool = True) -> tuple[int, str, str]:
    """Run ``edgeprune *argv`` in this process: (exit code, stdout, stderr). Arguments are passed as strings.

    argparse's own errors (a SystemExit at parse time) give their exit code, or with ``catch_exit=False`` propagate
    (for ``pytest.raises(SystemExit)``)."""
    from edgeprune.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        if not catch_exit:
            raise
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str, code: int) -> str:
    """The CLI failed with exit code 2 and one line of stderr, no traceback; return that line."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if ": warning: " not in line]  # a warning may come first
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def one_line(err: str) -> bool:
    """Whether ``err`` is exactly one ``edgeprune ...`` line, with no traceback."""
    return err.count("\n") == 1 and err.startswith("edgeprune ") and "Traceback" not in err


# -- one-line exceptions -----------------------------------------------------------------------------------------


def one_line_message(error, forbid: str = "\n") -> str:
    """The message of an exception (or of pytest's ExceptionInfo), asserted free of every character in ``forbid``."""
    text = str(getattr(error, "value", error))
    for char in forbid:
        assert char not in text, text
    return text


def assert_one_line_error(call: Callable[[], object], *fragments: str) -> str:
    """``call`` raises an EdgepruneError of one line containing every fragment; return its message."""
    with pytest.raises(EdgepruneError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- data sets ---------------------------------------------------------------------------------------------------


def synthetic(n: int = 32, c: int = 3, h: int = 8, w: int = 8, classes: int = 2, seed: int = 0) -> ImageDataset:
    """A tiny random ``c``x``h``x``w`` uint8 data set, labels in turn, its test split a copy of its training split,
    normalised by its own channel statistics."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    mean, std = channel_stats(x)
    return ImageDataset("synthetic", [str(i) for i in range(classes)], x, y, x.clone(), y.clone(), mean, std)


def random_dataset(shape, classes: int, train: int = 32, test: int = 16, seed: int = 0) -> ImageDataset:
    """A random uint8 image data set 'random': ``train`` and ``test`` images of ``shape``, random labels of
    ``classes`` classes, mean 0.5 and std 0.25 (after normalisation many activations sit at both ends of their
    range)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (train + test, *shape), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, classes, (train + test,), generator=gen)
    names = [f"c{i}" for i in range(classes)]
    c = shape[0]
    return ImageDataset("random", names, x[:train], y[:train], x[train:], y[train:], (0.5,) * c, (0.25,) * c)


def graded_dataset(
    n_train: int = 48, n_test: int = 16, classes: int = 4, seed: int = 0, shape=(3, 32, 32)
) -> ImageDataset:
    """A small random image data set 'synthetic' (uint8), labels that a net can partly learn (brightness by
    class)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = torch.randint(0, 128, (n_train + n_test, *shape), generator=g, dtype=torch.uint8)
    x = (x + (y * (127 // classes)).view(-1, 1, 1, 1)).to(torch.uint8)
    names = [str(i) for i in range(classes)]
    mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    return ImageDataset("synthetic", names, x[:n_train], y[:n_train], x[n_train:], y[n_train:], mean, std)


# -- models ------------------------------------------------------------------------------------------------------


def small_model(seed: int = 0, **kwargs) -> torch.nn.Module:
    """The zoo's tiny CNN, 4 channels wide unless ``kwargs`` say otherwise, its weights drawn after
    ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return edgeprune.create("tiny", **{"channels": 4, **kwargs})


# -- image files -------------------------------------------------------------------------------------------------


def png_bytes(w: int = 6, h: int = 5, seed: int = 0) -> bytes:
    """A small random RGB PNG, as bytes."""
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").save(buf, "PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk (length, type, body, CRC), for hand-made headers."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
