"""The files a data set is read from: a folder on disk or a tar archive, every read bounded before it is made."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from edgeprune.data.bounds import (
    ARCHIVE_MEMBER_COST,
    FACTS,
    MAX_BATCH_BYTES,
    Caps,
    is_batch,
    is_wanted,
    over_data_cap,
    printable,
    reason,
)
from edgeprune.errors import EdgepruneError


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ReadTooBig(Exception):
    """tarfile asked for more bytes at once than any file the loader reads may have."""


class _BoundedReads:
    """A tar stream for tarfile that refuses any one read over ``bound`` bytes.

    tarfile reads a long-name or pax header whole, whatever size its header declares: a few MB of
    compressed zeros could otherwise make it allocate gigabytes before any member is looked at.
    """

    def __init__(self, raw: object, bound: int) -> None:
        self.raw = raw
        self.bound = bound

    def read(self, size: int = -1) -> bytes:
        """At most ``bound`` bytes; a larger (or unbounded) request is refused."""
        if size is None or size < 0 or size > self.bound:
            raise _ReadTooBig(size)
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move in the (decompressed) stream; forward only, in the loader's use."""
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        """The position in the (decompressed) stream."""
        return self.raw.tell()


def _open_tar(path: Path, bound: int) -> tuple[tarfile.TarFile, object]:
    """Open ``path`` (plain, gzip, bzip2 or xz tar) for reading, every read bounded; also its raw file to close."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller, after the TarFile
    try:
        magic = raw.read(6)
        raw.seek(0)
        if magic.startswith(b"\x1f\x8b"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic.startswith(b"BZh"):
            stream = bz2.BZ2File(raw)
        elif magic.startswith(b"\xfd7zXZ\x00"):
            stream = lzma.LZMAFile(raw)
        else:
            stream = raw
        return tarfile.open(fileobj=_BoundedReads(stream, bound), mode="r:"), raw
    except BaseException:
        raw.close()
        raise


class FileTree:
    """A read-only file tree addressed by relative POSIX paths: a folder on disk, or a tar archive."""

    def __init__(self, root: Path, caps: Caps, digest: str = "", progress: bool = False):
        self.root = root
        self.caps = caps
        self.digest = digest  # set for an archive, whose member headers are read here (not their content)
        self.sizes: dict[PurePosixPath, int] = {}  # every visible regular file of an archive, from its header
        self.members: dict[PurePosixPath, tarfile.TarInfo] = {}  # the headers of those the loader may need
        self.kids: dict[PurePosixPath, set[str]] = {}
        self.facts = dict.fromkeys(FACTS, 0)  # what the caps were checked on, kept with the cache
        if digest:
            self._scan_archive(progress)
            for p in self.sizes:
                for child in [p, *p.parents][:-1]:
                    self.kids.setdefault(child.parent, set()).add(child.name)

    def _unreadable(self, e: BaseException) -> EdgepruneError:
        """The one-line error for an archive tarfile or a decompressor cannot read."""
        if isinstance(e, _ReadTooBig):
            return EdgepruneError(
                f"{self.root}: a tar header asks to read {e.args[0]:,} bytes at once, over the cap of "
                f"{self.read_bound:,} bytes (raise max_file_bytes to read it)"
            )
        return EdgepruneError(f"{self.root}: not a readable tar archive ({reason(e)})")

    @property
    def read_bound(self) -> int:
        """The most bytes one read from an archive may ask for: the largest file the loader may read."""
        return max(self.caps.file_bytes, MAX_BATCH_BYTES)

    def _scan_archive(self, progress: bool) -> None:
        """Note every member's header, reading no content; stop once the wanted members pass ``max_data_bytes``."""
        if progress:
            print(printable(f"reading {self.root}"), file=sys.stderr, flush=True)
        wanted = count = 0
        try:
            tar, raw = _open_tar(self.root, self.read_bound)
            with raw, tar:
                member = tar.next()
                while member is not None and wanted + count * ARCHIVE_MEMBER_COST <= self.caps.data_bytes:
                    tar.members.clear()  # tarfile keeps every header it reads; the loader keeps what it needs
                    count += 1
                    parts = [p for p in PurePosixPath(member.name).parts if p not in ("/", "")]
                    if member.isfile() and parts and not any(p.startswith(".") for p in parts):
                        rel = PurePosixPath(*parts)
                        if rel in self.members:  # a later member of the same name replaces it, as tar does
                            wanted -= self.members.pop(rel).size
                        self.sizes[rel] = member.size
                        if is_wanted(rel):
                            self.members[rel] = member
                            wanted += member.size
                    member = tar.next()
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
            raise self._unreadable(e) from None
        self.facts["scan_bytes"] = total = wanted + count * ARCHIVE_MEMBER_COST
        if total > self.caps.data_bytes:
            raise over_data_cap(
                str(self.root),
                f"its images and batch files, with {ARCHIVE_MEMBER_COST:,} bytes per member counted for "
                f"bookkeeping ({count:,} members so far), come to",
                total,
                self.caps.data_bytes,
            )

    @property
    def is_archive(self) -> bool:
        """True for an archive."""
        return bool(self.digest)

    def display(self, rel: PurePosixPath) -> str:
        """A name for messages."""
        return f"{self.root}:{rel}" if self.is_archive else str(self.root / rel)

    def is_dir(self, rel: PurePosixPath) -> bool:
        """Whether ``rel`` is a folder."""
        return rel in self.kids if self.is_archive else (self.root / rel).is_dir()

    def is_file(self, rel: PurePosixPath) -> bool:
        """Whether ``rel`` is a file."""
        return rel in self.sizes if self.is_archive else (self.root / rel).is_file()

    def children(self, rel: PurePosixPath) -> list[PurePosixPath]:
        """Visible entries of folder ``rel`` (hidden names skipped), sorted."""
        if self.is_archive:
            kids = self.kids.get(rel, set())
        else:
            kids = {p.name for p in (self.root / rel).iterdir()}
        return [rel / k for k in sorted(kids) if not k.startswith(".")]

    def limit(self, rel: PurePosixPath) -> int:
        """The most bytes read of one file: ``max_file_bytes``, at least ``MAX_BATCH_BYTES`` for CIFAR batches."""
        return max(self.caps.file_bytes, MAX_BATCH_BYTES) if is_batch(rel) else self.caps.file_bytes

    def _too_big(self, rel: PurePosixPath, size: int) -> EdgepruneError:
        """The one-line error for a file over its size cap."""
        return EdgepruneError(
            f"{self.display(rel)}: file is {size:,} bytes, over the cap of {self.limit(rel):,} bytes "
            "(raise max_file_bytes to read it)"
        )

    def size(self, rel: PurePosixPath) -> int:
        """A file's size, from its archive header or ``stat``."""
        if self.is_archive:
            return self.sizes[rel]
        try:
            return (self.root / rel).stat().st_size
        except OSError as e:
            raise EdgepruneError(f"{self.display(rel)}: cannot read ({e.strerror})") from None

    def plan(self, rels: list[PurePosixPath]) -> None:
        """Check the total size of the files about to be read against ``max_data_bytes``, before reading any.

        (Each file's own cap is checked as it comes to be read, from its size: it is never read either.)
        """
        total = 0
        for rel in rels:
            size = self.size(rel)
            total += size
            fact = "batch_file_bytes" if is_batch(rel) else "image_file_bytes"
            self.facts[fact] = max(self.facts[fact], size)
        self.facts["source_bytes"] = total
        if total > self.caps.data_bytes:
            raise over_data_cap(str(self.root), f"its {len(rels):,} files hold", total, self.caps.data_bytes)

    def read(self, rel: PurePosixPath) -> bytes:
        """A file's content from disk; a file over the size cap is refused from its size, unread."""
        try:
            with open(self.root / rel, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.limit(rel):
                    raise self._too_big(rel, size)
                return f.read(size)  # never more than the size checked, even if the file grows meanwhile
        except OSError as e:
            raise EdgepruneError(f"{self.display(rel)}: cannot read ({e.strerror})") from None

    def stream(self, rels: list[PurePosixPath]) -> Iterator[tuple[PurePosixPath, bytes]]:
        """Each file of ``rels`` with its content, one at a time: in the given order, or an archive's own order.

        An archive is read in one forward pass (seeking back in a compressed stream starts it over), and
        only one member is held at a time.
        """
        if not self.is_archive:
            for rel in rels:
                yield rel, self.read(rel)
            return
        order = sorted(set(rels), key=lambda r: self.members[r].offset_data)
        try:
            tar, raw = _open_tar(self.root, self.read_bound)
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
            raise self._unreadable(e) from None
        with raw, tar:
            for rel in order:
                info = self.members[rel]
                if info.size > self.limit(rel):
                    raise self._too_big(rel, info.size)
                try:
                    f = tar.extractfile(info)
                    data = _read_chunked(f, info.size) if f is not None else b""
                except Exception as e:  # noqa: BLE001 - any failure of an untrusted archive is a user error
                    raise self._unreadable(e) from None
                if len(data) != info.size:
                    raise EdgepruneError(f"{self.display(rel)}: truncated in the archive")
                yield rel, data
                del data  # not held while the next member is read

    def stamp(self, rel: PurePosixPath) -> str:
        """Size and modification time of a file on disk (content is covered by the digest in an archive)."""
        if self.is_archive:
            return str(self.sizes[rel])
        st = (self.root / rel).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"


def _read_chunked(f: object, size: int, chunk: int = 1 << 18) -> bytes:
    """Up to ``size`` bytes of ``f``, a chunk at a time.

    One large read of a member passes through three buffered layers (tarfile's, gzip's, zlib's), each
    allocating the whole size: chunks keep the transient to about twice the content.
    """
    parts = []
    while size > 0:
        part = f.read(min(chunk, size))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


__all__ = ["FileTree", "file_digest"]
