"""Run folders and inputs on storage that every node reaches: URIs through ``pyarrow.fs`` (docs/engine.md,
"On a cluster without a shared disk").

Ground floor, like ``dealrec_core.paths``: anything may import it.

A *URI* (``s3://bucket/runs/games?endpoint_override=host:port&scheme=http``, ``gs://...``, ``hdfs://...``:
anything with a scheme that ``pyarrow.fs.FileSystem.from_uri`` knows, ``file://`` excepted) names a file or
folder on shared storage; anything else is a local path, used as before.

Commands do their work on a local *mirror* of a URI: a copy of its files on this node, under
``$DEALREC_MIRROR`` (default: the system's temporary folder), in a folder named by this node and a digest
of the URI. The code that reads and writes files therefore never changes, and the bytes it writes are
the bytes a local run writes. What crosses between nodes goes through the URI:

- ``Mirror.pull(rel)`` copies the URI's files (under ``rel``) into the mirror, skipping those that the
  mirror already holds as they are on the storage (same size and modification time as when this node last
  copied them; small files are always copied again, so a rewritten manifest is never missed);
- ``Mirror.push(rel)`` and ``Mirror.sync_up()`` copy the mirror's new or changed files to the URI. One
  file is one object written in one request: a reader sees the whole file or none of it, as the local
  write-then-rename gives. Temporaries (``.NAME.tmp-...``) never leave the node.

``open_location(path)`` is what a command calls on its ``DATA`` and ``--out``: a URI becomes its mirror
(pulled: a rerun resumes the run stored there) and is *registered*, so that the engine sends the
mapping with every task (``translate_task``): a worker on another node reads the same files from its own
mirror of the same URI, and its shard outputs go back to the URI (``dealrec.engine``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dealrec_core.errors import DealrecError

_URI_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
SYNC_DIR = ".dealrec-sync"        # per-file records of what was pulled or pushed (kept inside the mirror)
ALWAYS_COPY_BELOW = 1 << 20       # bytes: files smaller than this are copied on every pull
MIRROR_ENV = "DEALREC_MIRROR"
COPY_BLOCK = 1 << 22            # bytes read and written at a time when copying a file
NODE_ENV = "DEALREC_NODE"


def is_uri(path) -> bool:
    """Whether ``path`` names shared storage (a scheme other than ``file://``)."""
    m = _URI_RE.match(str(path))
    return bool(m) and m.group("scheme").lower() != "file"


def display(location) -> str:
    """A location as messages show it: a URI without its query (endpoints, credentials); a local path as it is
    (a '?' in a file name is part of the name)."""
    return str(location).split("?", 1)[0] if is_uri(location) else str(location)


def node_name() -> str:
    """This node, as the mirror root names it: ``$DEALREC_NODE`` when set (several nodes on one machine,
    as in a test cluster, must not share a mirror), else a digest of the machine's name."""
    return os.environ.get(NODE_ENV) or "host-" + hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def mirror_root() -> Path:
    base = os.environ.get(MIRROR_ENV) or os.path.join(tempfile.gettempdir(), "dealrec-mirror")
    return Path(base) / node_name()


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def _in_temporary(rel: str) -> bool:
    """Whether the relative path ``rel`` is, or lies inside, a temporary (never copied either way)."""
    return any(_is_temporary(part) for part in rel.split("/"))


def _local_stat(path: Path) -> list[int]:
    """What a sync record keeps of a local file: its size and modification time (ns)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _files(top: Path) -> list[Path]:
    """``top`` itself when it is a file, else every file under it."""
    return [top] if top.is_file() else [Path(d) / f for d, _, names in os.walk(top) for f in names]


@dataclass
class _Stat:
    size: int
    mtime: int   # nanoseconds

    def as_list(self) -> list[int]:
        return [self.size, self.mtime]


class Mirror:
    """This node's copy of the file or folder at ``uri`` (see the module docstring)."""

    def __init__(self, uri: str, root: Path | None = None):
        import pyarrow.fs as pafs

        self.uri = str(uri)
        try:
            self.fs, path = pafs.FileSystem.from_uri(self.uri)
        except Exception as e:   # unknown scheme, bad query, no credentials
            raise DealrecError(f"{display(self.uri)}: cannot open this URI ({str(e).splitlines()[0]})") from None
        self.base = path.rstrip("/")
        name = self.base.rsplit("/", 1)[-1] or "root"
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.home = Path(root or mirror_root()) / digest   # holds the copy and its sync records
        self.local = self.home / name

    # ------------------------------------------------------------------ names
    def _remote(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _record(self, rel: str) -> Path:
        return self.home / SYNC_DIR / ((rel or "_") + ".json")

    def _local(self, rel: str) -> Path:
        return self.local / rel if rel else self.local

    def rel(self, local_path) -> str | None:
        """``local_path`` relative to the mirror ('' for the mirror itself); None when it is outside."""
        p = os.path.abspath(str(local_path))
        top = os.path.abspath(str(self.local))
        if p == top:
            return ""
        if p.startswith(top + os.sep):
            return p[len(top) + 1:].replace(os.sep, "/")
        return None

    def where(self, rel: str = "") -> str:
        return display(self.uri) + (f"/{rel}" if rel else "")

    # ------------------------------------------------------------------ records
    def _read_record(self, rel: str) -> dict | None:
        try:
            return json.loads(self._record(rel).read_text())
        except (OSError, ValueError):
            return None

    def _write_record(self, rel: str, remote: _Stat, local: Path) -> None:
        from dealrec_core.data import write_json_atomic   # pyarrow: not on a command's --help path

        path = self._record(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"remote": remote.as_list(), "local": _local_stat(local)})

    def _remote_stat(self, info) -> _Stat:
        mtime = info.mtime_ns if info.mtime_ns is not None else -1
        return _Stat(int(info.size), int(mtime))

    # ------------------------------------------------------------------ listing
    def _remote_files(self, rel: str) -> dict[str, _Stat]:
        """The files at ``rel`` (a file, or every file under a folder), keyed by their path in the mirror."""
        import pyarrow.fs as pafs

        try:
            info = self.fs.get_file_info(self._remote(rel))
            if info.type == pafs.FileType.File:
                return {rel: self._remote_stat(info)}
            if info.type == pafs.FileType.NotFound:
                return {}
            found = self.fs.get_file_info(pafs.FileSelector(self._remote(rel), recursive=True, allow_not_found=True))
        except OSError as e:
            raise DealrecError(f"{self.where(rel)}: {str(e).splitlines()[0]}") from None
        out = {}
        for f in found:
            if f.type != pafs.FileType.File:
                continue
            sub = f.path[len(self.base):].lstrip("/")
            if not _in_temporary(sub):
                out[sub] = self._remote_stat(f)
        return out

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        try:
            return self.fs.get_file_info(self.base).type != pafs.FileType.NotFound
        except OSError as e:
            raise DealrecError(f"{self.where()}: {str(e).splitlines()[0]}") from None

    # ------------------------------------------------------------------ copies
    def pull(self, rel: str = "") -> int:
        """Copy the files at ``rel`` from the storage into the mirror; returns how many were copied.

        A file is taken as unchanged when the storage reports the size and modification time it had when this
        node last copied it: a rewrite of a big file within the same second (the storage's time resolution)
        and to the same size is not seen. Shard outputs are rewritten only by a later run."""
        from dealrec_core.data import atomic_file   # pyarrow: not on a command's --help path

        copied = 0
        files = self._remote_files(rel)
        self._drop_deleted(rel, files)
        for sub, remote in sorted(files.items()):
            local = self._local(sub)
            record = self._read_record(sub)
            if (remote.size >= ALWAYS_COPY_BELOW and record is not None and record["remote"] == remote.as_list()
                    and local.exists() and _local_stat(local) == record["local"]):
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                with atomic_file(local) as tmp, self.fs.open_input_stream(self._remote(sub)) as src, \
                        open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, COPY_BLOCK)
            except OSError as e:
                raise DealrecError(f"{self.where(sub)}: cannot copy it to {local} ({str(e).splitlines()[0]})") from None
            self._write_record(sub, remote, local)
            copied += 1
        return copied

    def _drop_deleted(self, rel: str, remote_files: dict) -> None:
        """Remove the mirror's files under ``rel`` that were copied from or to the storage and are gone from
        it (deleted there since): a run deleted on the storage starts afresh, not from this node's copy.
        Files never copied (work of a run killed here before it pushed) stay, to be pushed."""
        top = self._local(rel)
        if not top.exists():
            return
        for p in _files(top):
            sub = self.rel(p)
            if sub is None or sub in remote_files or _in_temporary(sub):
                continue
            if self._read_record(sub) is not None:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                with contextlib.suppress(FileNotFoundError):
                    self._record(sub).unlink()

    def push(self, rel: str) -> None:
        """Copy the mirror's file ``rel`` to the storage (one object, written whole)."""
        local = self._local(rel)
        remote = self._remote(rel)
        try:
            self.fs.create_dir(remote.rsplit("/", 1)[0], recursive=True)
            with open(local, "rb") as src, self.fs.open_output_stream(remote) as dst:
                shutil.copyfileobj(src, dst, COPY_BLOCK)
            info = self.fs.get_file_info(remote)
        except OSError as e:
            raise DealrecError(f"{self.where(rel)}: cannot write it ({str(e).splitlines()[0]})") from None
        self._write_record(rel, self._remote_stat(info), local)

    def changed(self) -> list[str]:
        """The mirror's files that are new or changed since they were last pulled or pushed."""
        out = []
        if not self.local.exists():
            return out
        for p in _files(self.local):
            sub = self.rel(p)
            if sub is None or _in_temporary(sub):
                continue
            record = self._read_record(sub)
            if record is None or record["local"] != _local_stat(p):
                out.append(sub)
        return sorted(out)

    def sync_up(self) -> int:
        """Push every new or changed file of the mirror; returns how many."""
        todo = self.changed()
        # manifests last: a reader that finds one finds what it describes
        for sub in sorted(todo, key=lambda s: (s.endswith(".json"), s)):
            self.push(sub)
        return len(todo)


# ----------------------------------------------------------------------------- the registered locations

_ACTIVE: list[Mirror] = []   # the URIs this command works on, in this (the driver's) process


@contextlib.contextmanager
def open_location(path, *, writes: bool = False, only: str = "") -> Iterator[Path]:
    """A command's ``DATA`` or ``--out``: a local path as it is; a URI as this node's mirror of it, pulled
    first (an input, or a run to resume; ``only``: just that file or folder of it), registered for the
    engine while the block runs, and (``writes``) its new and changed files pushed back when the block ends,
    whether it ended well or not (finished work is never lost)."""
    if not is_uri(path):
        yield Path(path)
        return
    mirror = Mirror(str(path))
    if not writes and not mirror.exists():
        raise DealrecError(f"{mirror.where()}: no such file or folder")
    mirror.pull(only)
    _ACTIVE.append(mirror)
    try:
        yield mirror.local
    except BaseException:
        _ACTIVE.remove(mirror)
        if writes:
            with contextlib.suppress(Exception):   # keep what was finished; the first error is the one to show
                mirror.sync_up()
        raise
    _ACTIVE.remove(mirror)
    if writes:
        mirror.sync_up()


def local_copy(path) -> Path:
    """Where this node holds ``path``: itself when local; its mirror (as the last command left it) for a URI.
    What the Python API returns for a run on shared storage, so its paths can be opened."""
    return Mirror(str(path)).local if is_uri(path) else Path(path)


def join(location, name: str) -> str:
    """``location``/``name`` for messages, a URI shown without its query."""
    return f"{display(str(location)).rstrip('/')}/{name}" if is_uri(location) else str(Path(location) / name)


def active_maps() -> list[list[str]]:
    """What a task needs to find the registered URIs: ``[driver's local path, uri]`` for each."""
    return [[str(m.local), m.uri] for m in _ACTIVE]


def sync_active() -> None:
    """Push what the driver wrote into any registered mirror (before workers on other nodes read it)."""
    for mirror in _ACTIVE:
        mirror.sync_up()


def mirror_for(local_path) -> Mirror | None:
    """The registered mirror that holds ``local_path`` (None when it is outside them all)."""
    for m in _ACTIVE:
        if m.rel(local_path) is not None:
            return m
    return None


def translate_task(task, maps: list[list[str]]):
    """``task`` with every string that names a path inside a driver's mirror rewritten to the same path in
    this node's mirror of the same URI; returns ``(task, [(mirror, rel), ...])`` for the paths it rewrote."""
    mirrors = [(driver_local, Mirror(uri)) for driver_local, uri in maps]
    found: list[tuple[Mirror, str]] = []

    def walk(value):
        if isinstance(value, str):
            for driver_local, mirror in mirrors:
                if value == driver_local or value.startswith(driver_local + os.sep):
                    rel = value[len(driver_local):].lstrip(os.sep).replace(os.sep, "/")
                    found.append((mirror, rel))
                    return str(mirror.local / rel) if rel else str(mirror.local)
            return value
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        return value

    return walk(task), found
