"""Crash-safe file writes: everything the engine writes either lands whole or not at all.

A write goes to a temporary file in the same folder, is flushed to disk, and is then renamed over
the old file (`os.replace` is atomic on POSIX and Windows). A process killed half-way leaves the
previous file intact and at worst a stray `.<name>.<pid>.<random>.tmp`; the temporary's name carries
its writer's pid, so `remove_stale_temporaries()` can delete the ones whose writer is gone (training
does so when it starts) without touching a write still in progress.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .processes import process_alive

# `.<target name>.<writer pid>.<mkstemp's random part: letters, digits, underscores>.tmp`
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.\w+\.tmp$")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on some platforms (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; run files are meant to be readable like any other
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that killed writers left in `folder` (not in its subfolders); returns them.

    A SIGKILL in the middle of a checkpoint write leaves a partial `.last.pt.<pid>.<random>.tmp`
    behind, as large as a checkpoint, and every later write picks a new random name: without this,
    each kill would leak one. Temporaries of live processes (another thread's write) are kept.
    """
    removed = []
    for entry in Path(folder).iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file() or process_alive(int(match.group(1))):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:  # already gone, or not ours to delete: harmless either way
            pass
    return removed


def file_key(path: Path) -> tuple:
    """(resolved path, mtime, size): a cache key that changes whenever the file is replaced."""
    stat = Path(path).stat()
    return (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def write_json_atomic(path: Path, data: Any, sort_keys: bool = True) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"), mode="w")


def write_npz_atomic(path: Path, arrays: dict[str, Any], compressed: bool = True) -> None:
    """Save `arrays` as one .npz archive at `path`, atomically (zip-compressed unless told otherwise)."""
    save = np.savez_compressed if compressed else np.savez
    write_atomic(path, lambda f: save(f, **arrays))


def remembered(path: Path, key: str, compute: Callable[[], float], keep: int = 500) -> float:
    """`compute()`'s figure for `key`, remembered across processes in the JSON file `path` (key -> figure).

    Read from the file when there, else computed and added to it; the `keep` newest are kept. Two
    processes adding at once may drop one figure, which is then computed again, never wrong; a file that
    cannot be written (a read-only or full disk) only means computing again next time.
    """
    saved = read_json(path, {})
    if isinstance(saved, dict) and isinstance(saved.get(key), (int, float)):
        return float(saved[key])
    value = float(compute())
    saved = read_json(path, {})  # again: another process may have added figures meanwhile
    saved = saved if isinstance(saved, dict) else {}
    saved.pop(key, None)
    saved[key] = value  # newest last
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, dict(list(saved.items())[-keep:]), sort_keys=False)
    except OSError:
        pass
    return value


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
