"""Where a command may write: never over an input, never half a file (docs/reliability.md).

Ground floor, like ``dealrec_core.data`` and ``dealrec_core.errors``: anything may import it.

- ``check_output(out, inputs, writes=...)`` refuses, before anything is written, an output that is an
  input, lies inside one, or (for the parts it writes) contains one; and an output that cannot be
  written (a path component that is a file, a folder without write permission).
- Temporary names are ``.NAME.tmp-PID@HOST`` (files; a suffix may follow), ``.NAME.tmp-PID@HOST-XXXXXXXX``
  (folders) and ``.NAME.old-PID@HOST-XXXXXXXX`` (the previous output while it is being replaced); HOST
  is a short digest of the machine's name. ``remove_stale_temps(path)`` deletes those of ``path`` made
  on this machine by a process that is gone (a killed run), so the next run that writes ``path``
  cleans up after it. A live process's temporaries, and another machine's (a file system shared by a
  Ray cluster), are left alone.
- ``describe_os_error`` turns a file-system error into the one line the CLI prints, naming the
  user's path (``NAME``) rather than its temporary name.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterable, Mapping

from dealrec_core.errors import DealrecError

# .NAME.tmp-PID@HOST, .NAME.tmp-PID@HOST-RANDOM, .NAME.tmp-PID.png (no @HOST: older names, and writers
# that name their temporaries themselves; taken to be this machine's), .NAME.old-PID@HOST-RANDOM
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:@(?P<host>[0-9a-f]{8}))?"
                      r"(?P<rest>(?:[-.].*)?)$", re.S)
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def real(path: str | Path) -> Path:
    """``path`` with symlinks resolved (also when it, or its tail, does not exist yet)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def check_output(out: str | Path, inputs: Mapping[str, "str | Path | None"], *,
                 writes: Iterable[str] | None = None, option: str = "--out", folder: bool = True) -> None:
    """Refuse ``out`` before anything is written when writing it could change an input.

    ``inputs`` maps how the user named each input (``"DATA"``, ``"--surrogate"``) to its path; a
    ``None`` path is skipped. Paths are compared with symlinks resolved. Refused always: ``out`` is an
    input, or lies inside one. An input inside ``out`` is refused when ``writes`` is ``None`` (the
    command replaces ``out`` as a whole) or when it is, or lies inside, one of the ``writes`` (paths
    relative to ``out`` that the command writes in place); other inputs inside ``out`` are untouched
    and allowed (``RUN/data`` and ``RUN/surrogate`` of ``dealrec prune``).

    Then ``out`` must be writable: no component of it may be a file, and the folder it is written in
    must allow writing (``folder``: ``out`` itself must be a folder when it exists).
    """
    out_real = real(out)
    written = None if writes is None else [out_real / w for w in writes]
    given = [(name, path, real(path)) for name, path in inputs.items() if path is not None and str(path) != ""]
    for name, path, inp in given:   # the most direct overlap first: the same path, ...
        if inp == out_real:
            raise DealrecError(f"{option} {out} is the input {name} {path}: refusing to write over an input "
                               f"(choose another {option})")
    for name, path, inp in given:   # ... then out inside an input, ...
        if _inside(out_real, inp):
            raise DealrecError(f"{option} {out} is inside the input {name} {path}: refusing to write into an "
                               f"input (choose another {option})")
    for name, path, inp in given:   # ... then an input inside what out replaces or writes
        if not _inside(inp, out_real):
            continue
        if written is None:
            raise DealrecError(f"the input {name} {path} is inside {option} {out}, which this command "
                               f"replaces as a whole: refusing to delete an input (choose another {option})")
        for w in written:
            if inp == w or _inside(inp, w):
                raise DealrecError(f"the input {name} {path} is inside {option} {out}, at "
                                   f"{w.relative_to(out_real).as_posix()} which this command writes: "
                                   f"refusing to overwrite an input (choose another {option})")
    check_writable(out, option=option, folder=folder, in_place=writes is not None)


def check_writable(out: str | Path, *, option: str = "--out", folder: bool = True, in_place: bool = False) -> None:
    """One line, before any work, when ``out`` cannot be written: a component of it is a file, or the
    folder that receives the new entries is not writable (permissions, read-only file system).

    ``in_place``: the command writes inside an existing ``out`` (else it builds ``out`` beside it, under
    a temporary name, and renames it: the folder that holds ``out`` must be writable).
    """
    out = Path(out)
    if folder and out.exists() and not out.is_dir():
        raise DealrecError(f"{option} {out}: is a file, not a folder")
    existing = None
    for anc in out.parents:
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                raise DealrecError(f"{option} {out}: {anc} is a file, not a folder")
            existing = anc
            break
    where = out if in_place and out.is_dir() else existing
    if where is not None and not os.access(where, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(where) else "permission denied"
        raise DealrecError(f"{option} {out}: cannot write in {where} ({reason})")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- temporaries

def temp_file_name(path: str | Path, suffix: str = "") -> Path:
    """The temporary twin of file ``path`` for this process: ``.NAME.tmp-PID@HOST[suffix]`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{HOST}{suffix}")


def temp_prefix(path: str | Path, kind: str = "tmp") -> str:
    """``mkdtemp`` prefix of a temporary folder beside ``path``: ``.NAME.tmp-PID@HOST-``."""
    return f".{Path(path).name}.{kind}-{os.getpid()}@{HOST}-"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True   # not a pid we know how to check: assume someone owns it
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True   # it exists, owned by another user
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporaries of ``path`` (files or folders beside it) left by processes that no longer
    run; returns what was removed. Temporaries of live processes, this one included, are kept."""
    path = Path(path)
    parent = path.parent
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    prefix = f".{path.name}."
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        m = _TEMP_RE.match(entry.name)
        if m is None or m.group("name") != path.name:
            continue
        pid = int(m.group("pid"))
        if m.group("host") not in (None, HOST) or pid == os.getpid() or _pid_alive(pid):
            continue
        p = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass   # another run cleaned it first
    return removed


def user_path(filename: str | os.PathLike) -> str:
    """``filename`` with every temporary component ``.NAME.tmp-...`` shown as the ``NAME`` it becomes."""
    parts = []
    for part in Path(filename).parts:
        m = _TEMP_RE.match(part)
        parts.append(m.group("name") if m else part)
    return str(Path(*parts)) if parts else str(filename)


def describe_os_error(e: OSError) -> str:
    """One line for a file-system error: ``PATH: what went wrong`` (the user's path, not a temporary)."""
    what = e.strerror or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    if e.errno == errno.ENOTDIR or (e.errno == errno.EEXIST and e.filename and Path(e.filename).exists()
                                    and not Path(e.filename).is_dir()):
        what = "is a file, not a folder" if e.errno == errno.EEXIST else f"{what} (a component is a file)"
    if e.filename is None:
        return what
    where = user_path(e.filename)
    if e.filename2 is not None:
        where = f"{where} -> {user_path(e.filename2)}"
    return f"{where}: {what}"
