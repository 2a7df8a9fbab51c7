"""The data set layouts: image folders (train/ and test/ of class folders) and the official CIFAR python pickles."""

from __future__ import annotations

import hashlib
import io as _io
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from edgeprune.data.bounds import IMAGE_EXTENSIONS, Arrays, Caps, over_data_cap, printable
from edgeprune.data.cache import CACHE_FORMAT, read_cache, store_cache
from edgeprune.data.decode import decode_all, fit_tensor, stored_side
from edgeprune.data.tree import FileTree
from edgeprune.errors import EdgepruneError

TEST_SPLITS = ("test", "val")  # val/ is the test split when there is no test/ (as before)
# Part of the cache key of resized images: change it when the resize changes.
RESIZE_RULE = "edgeprune-resize/1: shorter side round(N*8/7), Pillow bilinear, centre square; evaluation centre N"


# -- layout detection -------------------------------------------------------------------------


def _has_splits(tree: FileTree, root: PurePosixPath) -> bool:
    return tree.is_dir(root / "train")


def _is_cifar10(tree: FileTree, root: PurePosixPath) -> bool:
    return tree.is_file(root / "data_batch_1") and tree.is_file(root / "test_batch")


def _is_cifar100(tree: FileTree, root: PurePosixPath) -> bool:
    return tree.is_file(root / "train") and tree.is_file(root / "test")


def _find_root(tree: FileTree) -> tuple[PurePosixPath, str]:
    """Go down through folders holding nothing but one folder; say which layout the data set has."""
    root = PurePosixPath(".")
    for _ in range(16):
        if _is_cifar10(tree, root):
            return root, "cifar10"
        if _is_cifar100(tree, root):
            return root, "cifar100"
        if _has_splits(tree, root):
            return root, "folders"
        entries = tree.children(root)
        if len(entries) == 1 and tree.is_dir(entries[0]):
            root = entries[0]
        else:
            break
    if not tree.children(root):
        raise EdgepruneError(f"{tree.display(root)}: empty, no data set")
    raise EdgepruneError(
        f"{tree.display(root)}: not a data set: expected train/ and test/ folders of class folders, "
        "cifar-10-batches-py (data_batch_1..5, test_batch) or cifar-100-python (train, test)"
    )


# -- official CIFAR python pickles ------------------------------------------------------------


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, restricted to latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _frombuffer(buf: object, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    """numpy's protocol-5 array constructor, for plain (non-object) arrays only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and plain numpy arrays."""

    _reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array reconstructor
    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> object:
        """Refuse every global except numpy's array constructors and latin-1 bytes."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'") from None


def read_pickle(data: bytes, where: str) -> dict:
    """Unpickle one official CIFAR batch file safely (no code can run); keys are decoded to str."""
    try:
        obj = _CifarUnpickler(_io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted file is a user error
        raise EdgepruneError(f"{where}: not a CIFAR python batch file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise EdgepruneError(f"{where}: not a CIFAR python batch file (holds a {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch_arrays(
    tree: FileTree, rel: PurePosixPath, content: bytes, label_key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR batch file's images and labels, its decoded size counted against ``max_data_bytes`` first."""
    where = tree.display(rel)
    batch = read_pickle(content, where)
    if "data" not in batch or label_key not in batch:
        raise EdgepruneError(f"{where}: missing '{'data' if 'data' not in batch else label_key}' entry")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise EdgepruneError(f"{where}: 'data' must be a uint8 array of shape (N, 3072)")
    # A pickle may call numpy's array constructor for any shape: count it before copying into it.
    tree.facts["decoded_bytes"] += data.nbytes
    if tree.facts["decoded_bytes"] > tree.caps.data_bytes:
        raise over_data_cap(
            where, "with the batches before it, the images take", tree.facts["decoded_bytes"], tree.caps.data_bytes
        )
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise EdgepruneError(f"{where}: '{label_key}' is not a list of integers") from None
    if len(y) != len(data):
        raise EdgepruneError(f"{where}: {len(data)} images but {len(y)} labels")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(y.copy())


def _label_names(names: object, count: int) -> list[str]:
    if isinstance(names, list) and len(names) >= count:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return [str(i) for i in range(count)]


def _load_pickles(tree: FileTree, root: PurePosixPath, kind: str) -> Arrays:
    if kind == "cifar10":
        files = [root / f"data_batch_{i}" for i in range(1, 6) if tree.is_file(root / f"data_batch_{i}")]
        test_file, label_key, meta, names_key, least = root / "test_batch", "labels", "batches.meta", "label_names", 0
    else:
        files, test_file = [root / "train"], root / "test"
        label_key, meta, names_key, least = "fine_labels", "meta", "fine_label_names", 100
    meta = root / meta
    needed = [*files, test_file] + ([meta] if tree.is_file(meta) else [])
    tree.plan(needed)
    parts: dict[PurePosixPath, tuple[torch.Tensor, torch.Tensor]] = {}
    names: object = None
    for rel, content in tree.stream(needed):  # an archive's members come in its own order
        if rel == meta:
            names = read_pickle(content, tree.display(rel)).get(names_key)
        else:
            parts[rel] = _batch_arrays(tree, rel, content, label_key)
        del content
    train_x, train_y = torch.cat([parts[f][0] for f in files]), torch.cat([parts[f][1] for f in files])
    test_x, test_y = parts.pop(test_file)
    parts.clear()
    if len(train_y) == 0 or len(test_y) == 0:
        raise EdgepruneError(f"{tree.display(root)}: no images")
    count = max(least, int(max(train_y.max(), test_y.max())) + 1)
    classes = _label_names(names, count)
    if int(min(train_y.min(), test_y.min())) < 0:
        raise EdgepruneError(f"{tree.display(root)}: negative labels")
    return train_x, train_y, test_x, test_y, classes


# -- image folders ----------------------------------------------------------------------------


def _list_split(tree: FileTree, split: PurePosixPath) -> dict[str, list[PurePosixPath]]:
    """Class name -> sorted image files of one split folder."""
    return {
        d.name: [p for p in tree.children(d) if p.suffix.lower() in IMAGE_EXTENSIONS and tree.is_file(p)]
        for d in tree.children(split)
        if tree.is_dir(d)
    }


@dataclass
class Stored:
    """A data set as the cache holds it: its training images, then its test and validation images one after the
    other ("held", one image of the training split standing in when there are none), all at one size."""

    arrays: Arrays  # train_x, train_y, held_x, held_y, classes
    n_test: int
    n_val: int = 0
    resized: bool = False  # every image through fit_square to stored_side(size)
    content: str | None = None  # the digest of ``arrays``, when read from or written to the cache


def cache_keys(h: hashlib._Hash, size: int | None) -> tuple[str, str | None]:
    """The cache keys of the images as they are (today's key) and, with ``size``, resized by RESIZE_RULE to it."""
    resized = h.copy()
    resized.update(f"\0resize\0{size}\0{RESIZE_RULE}".encode())
    return h.hexdigest()[:32], (resized.hexdigest()[:32] if size is not None else None)


def lookup(keys: tuple[str, str | None], size: int | None, caps: Caps, fits: Callable[[Arrays], bool]) -> Stored | None:
    """The cached images: as they are when they have the size asked for (or none is), else resized; None on a miss."""
    native, resized = keys
    hit = read_cache(native, caps)
    if hit is not None and fits(hit[0]) and (size is None or tuple(hit[0][0].shape[2:]) == (size, size)):
        return Stored(hit[0], len(hit[0][3]), content=hit[1])
    hit = read_cache(resized, caps) if resized is not None else None
    if hit is not None and fits(hit[0]):
        return Stored(hit[0], len(hit[0][3]), resized=True, content=hit[1])
    return None


def _resize_pickles(arrays: Arrays, size: int | None) -> Stored:
    """CIFAR's 32x32 arrays, resized when another size is asked for."""
    if size is None or tuple(arrays[0].shape[2:]) == (size, size):
        return Stored(arrays, len(arrays[3]))
    side = stored_side(size)
    train_x, train_y, test_x, test_y, classes = arrays
    return Stored((fit_tensor(train_x, side), train_y, fit_tensor(test_x, side), test_y, classes), len(test_y), 0, True)


def _splits(tree: FileTree, root: PurePosixPath) -> dict[str, PurePosixPath]:
    """The split folders: train, test (``test/``, else ``val/`` as today) and val (``val/`` next to ``test/``)."""
    splits = {"train": root / "train"}
    test_name = next((s for s in TEST_SPLITS if tree.is_dir(root / s)), None)
    if test_name is not None:
        splits["test"] = root / test_name
    if test_name == "test" and tree.is_dir(root / "val"):
        splits["val"] = root / "val"
    return splits


def _listing(tree: FileTree, root: PurePosixPath) -> tuple[dict[str, dict[str, list[PurePosixPath]]], list[str]]:
    """Each split's class name -> sorted image files, and the class names (the training split's)."""
    splits = _splits(tree, root)
    listing = {split: _list_split(tree, folder) for split, folder in splits.items()}
    classes = sorted(listing["train"])
    if not classes:
        raise EdgepruneError(f"{tree.display(splits['train'])}: no class folders")
    for split, by_class in listing.items():
        if not any(by_class.values()):
            raise EdgepruneError(f"{tree.display(splits[split])}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        extra = sorted(set(by_class) - set(classes))
        if extra:
            raise EdgepruneError(
                f"{tree.display(splits[split])}: class folder '{extra[0]}' has no counterpart in "
                f"{tree.display(splits['train'])}"
            )
    return listing, classes


def load_tree(tree: FileTree, progress: bool, cache: bool, size: int | None = None) -> Stored:
    """Find the data set in ``tree`` and load it (decoding images, or reading them from the cache).

    With ``size``, a set of ``size`` x ``size`` images is kept as it is (and cached as before); any other
    is resized (:func:`edgeprune.data.decode.decode_all`) and cached under a key that adds the size and the rule.
    """
    root, kind = _find_root(tree)
    if kind != "folders":
        return _resize_pickles(_load_pickles(tree, root, kind), size)
    listing, classes = _listing(tree, root)
    order = [s for s in ("train", "test", "val") if s in listing]
    files = [(p, i) for split in order for i, c in enumerate(classes) for p in listing[split].get(c, [])]
    counts = {split: sum(len(v) for v in listing.get(split, {}).values()) for split in ("train", "test", "val")}
    n_train, n_held = counts["train"], counts["test"] + counts["val"]
    keys: tuple[str, str | None] = ("", None)
    if cache:  # every image's name, size and modification time
        h = hashlib.sha256(f"{CACHE_FORMAT}\0{Path(tree.display(root)).resolve()}".encode())
        for p, i in files:
            h.update(f"{p.relative_to(root)}\0{tree.stamp(p)}\0{i}\n".encode())
        keys = cache_keys(h, size)
        lengths = (n_train, n_held or 1)
        hit = lookup(keys, size, tree.caps, lambda a: a[4] == classes and (len(a[1]), len(a[3])) == lengths)
        if hit is not None:
            hit.n_test, hit.n_val = counts["test"], counts["val"]
            return hit
    tree.plan([p for p, _ in files])
    start = time.perf_counter()
    if progress:
        print(printable(f"decoding {len(files):,} images of {tree.display(root)} (once)"), file=sys.stderr, flush=True)
    x, color, resized = decode_all(tree, [p for p, _ in files], progress, size)
    y = torch.tensor([i for _, i in files], dtype=torch.int64)
    if not color:
        x = x[:, :1].contiguous()
    held_x, held_y = (x[n_train:], y[n_train:]) if n_held else (x[:1].clone(), y[:1].clone())  # train/ alone
    stored = Stored((x[:n_train], y[:n_train], held_x, held_y, classes), counts["test"], counts["val"], resized)
    if progress:
        print(f"decoded in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if cache:
        stored.content = store_cache(keys[resized] or "", stored.arrays, tree.display(root), tree.facts)
    return stored


__all__ = ["RESIZE_RULE", "Stored", "cache_keys", "load_tree", "lookup", "read_pickle"]
