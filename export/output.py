"""Where an export goes, and how it gets there without deleting anything that is not provably ours.

- `check_output` (at planning): --output is never a symbolic link, the current directory, the source checkpoint or
  a parent of either; an existing non-empty directory is replaced only with --overwrite and only when it is an export
  (its manifest.json is ours and parses).
- The export is built in a work directory beside the output (same file system, so the final move is one rename),
  named `.rerank-export-<output name>-<random>` and holding a marker file with the owner's host, PID and start time.
  An interrupted export (Ctrl-C, SIGTERM) removes it; one killed by SIGKILL cannot, so every export first removes the
  temporaries beside its output whose marker names a process on this host that is gone (`remove_stale`). Anything
  else with our prefix (no marker, a live owner, another host) is left alone.
- `publish` moves the work directory into place with a rename that never replaces (Linux renameat2 NOREPLACE): a
  directory that appeared at the output meanwhile is kept, and the new export is kept beside it as `<output>.new`.
  An export being replaced is first renamed aside, checked to be the one planned, and deleted only after the new one
  is in place; if the new one cannot be moved in, the old one is moved back.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rerank_runtime.errors import ExportError

PREFIX = ".rerank-export-"
MARKER = ".rerank-export-owner"


# --- interrupts ------------------------------------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs."""


_received: list[int] = []  # the interrupting signals this process got (main thread only)


def on_interrupt(signum: int, frame: object) -> None:
    """Signal handler for SIGINT and SIGTERM: note the signal, then raise like Ctrl-C."""
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def interrupted() -> int | None:
    """The last interrupting signal received, if any (a library may have turned the exception into its own error:
    torch's exporter does, and may even retry)."""
    return _received[-1] if _received else None


def reraise_interrupt() -> None:
    """At a safe point: raise the interrupt again if one arrived and was swallowed on the way."""
    if _received:
        raise Terminated() if _received[-1] == signal.SIGTERM else KeyboardInterrupt()


def forget_interrupts() -> None:
    _received.clear()


@dataclass(frozen=True)
class Target:
    path: Path
    replaces: tuple[int, int] | None = None  # (device, inode) of the export --overwrite replaces
    empty_dir: bool = False  # an empty directory stood there at planning time


def is_export(directory: Path) -> bool:
    """A directory whose manifest.json rerank-export wrote (any schema version): the only kind --overwrite replaces."""
    manifest = directory / "manifest.json"
    if manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(data, dict) and data.get("format") == "onnx" and type(data.get("schema_version")) is int
            and isinstance(data.get("spec"), dict) and isinstance(data.get("graph"), dict))


def check_output(output: Path, overwrite: bool, checkpoint: Path) -> Target:
    """Refuse an --output that an export must never write to or replace; say what is there otherwise."""
    if output.is_symlink():
        raise ExportError(f"--output {output} is a symbolic link (to {os.readlink(output)}); an export never writes "
                          "through or replaces a link: pass the real directory")
    real = output.resolve()
    for protected, what in ((Path.cwd().resolve(), "the current directory"), (checkpoint.resolve(),
                                                                            "the source checkpoint")):
        if real == protected or real in protected.parents:
            relation = "is" if real == protected else "contains"
            raise ExportError(f"--output {output} {relation} {what} ({protected}); an export never replaces it: "
                              "choose another --output")
    existing = next(p for p in (output, *output.parents) if p.exists() or p.is_symlink())
    if existing != output and not existing.is_dir():
        raise ExportError(f"--output {output} cannot be created: {existing} is a file, not a directory")
    if not output.exists():
        return Target(output)
    if not output.is_dir():
        raise ExportError(f"--output {output} is a file; pass a directory path")
    if not any(output.iterdir()):
        return Target(output, empty_dir=True)
    if not overwrite:
        raise ExportError(f"{output} exists and is not empty; pass --overwrite to replace it or choose --output")
    if not is_export(output):
        raise ExportError(f"--overwrite replaces only an export directory, and {output} is not one (it has no "
                          "manifest.json written by rerank-export); remove it yourself or choose another --output")
    stat = output.stat()
    return Target(output, replaces=(stat.st_dev, stat.st_ino))


# --- temporaries beside the output ----------------------------------------------------------------------------------


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused PID; None elsewhere."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def _is_stale(directory: Path) -> bool:
    """True only for our temporary whose owner is provably gone: same host, PID not running (or reused)."""
    try:
        owner = json.loads((directory / MARKER).read_text(encoding="utf-8"))
        host, pid, started = owner["host"], owner["pid"], owner.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # running, as another user
        return False
    return started is not None and _process_start(pid) not in (None, started)


def remove_stale(parent: Path) -> list[Path]:
    """Remove temporaries left beside outputs in `parent` by exports that were killed; returns what was removed."""
    removed = []
    for entry in sorted(parent.glob(f"{PREFIX}*")):
        if entry.is_dir() and not entry.is_symlink() and _is_stale(entry):
            shutil.rmtree(entry)
            removed.append(entry)
    return removed


def fresh_dir(parent: Path, prefix: str) -> Path:
    """A new directory `<prefix><random>` in parent, created with the usual umask (mkdtemp's mode is 0700, which
    keeps other users and service accounts out of what ends up an export or a checkpoint)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path


def umask() -> int:
    """This process's umask, read without changing it where Linux allows (/proc), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_work_dir(parent: Path, name: str) -> Path:
    """A new work directory beside the output, marked as this process's."""
    work = fresh_dir(parent, f"{PREFIX}{name}-")
    _mark(work)
    return work


def _mark(directory: Path) -> None:
    (directory / MARKER).write_text(json.dumps(_owner()), encoding="utf-8")


def discard(work: Path) -> None:
    """Remove a work directory of this process (after a failure); a no-op once it was moved into place."""
    if work.is_dir() and not work.is_symlink():
        shutil.rmtree(work, ignore_errors=True)


# --- the final move -----------------------------------------------------------------------------------------------


def _renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename src to dst, raising FileExistsError if dst exists. Atomic on Linux (renameat2 RENAME_NOREPLACE); where
    the OS or file system lacks it, a check then a rename (a narrow race, since os.rename replaces empty dirs)."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while directories are being swapped, so an interrupt never lands between two renames."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _keep_beside(directory: Path, output: Path, suffix: str) -> Path:
    """Move one of our directories to a visible sibling of the output (`<name>.<suffix>`, `-2`, ...), unmarked."""
    for n in range(1, 1000):
        kept = output.with_name(f"{output.name}.{suffix}" + (f"-{n}" if n > 1 else ""))
        try:
            rename_noreplace(directory, kept)
        except FileExistsError:
            continue
        (kept / MARKER).unlink(missing_ok=True)
        return kept
    raise ExportError(f"could not find a free name beside {output} for {directory}; it is still there")


def _appeared(work: Path, output: Path, what: str, previous: Path | None = None) -> ExportError:
    kept = _keep_beside(work, output, "new")
    old = f", the export it was to replace is at {_keep_beside(previous, output, 'previous')}" if previous else ""
    return ExportError(f"{output} {what} while exporting; kept it untouched, and the new export is at {kept}{old}: "
                       "move them yourself")


def publish(work: Path, target: Target) -> None:
    """Move the finished work directory to target.path; see the module docstring for what is never deleted."""
    output = target.path
    with _signals_deferred():
        if target.replaces is None:
            if target.empty_dir:
                try:
                    output.rmdir()  # only ever removes an empty directory
                except FileNotFoundError:
                    pass
                except OSError:
                    raise _appeared(work, output, "was filled") from None
            try:
                rename_noreplace(work, output)
            except FileExistsError:
                raise _appeared(work, output, "appeared") from None
        else:
            _replace(work, target)
        (output / MARKER).unlink(missing_ok=True)


def _replace(work: Path, target: Target) -> None:
    output = target.path
    aside = output.with_name(f"{PREFIX}{output.name}-previous-{secrets.token_hex(4)}")
    try:
        rename_noreplace(output, aside)
    except FileNotFoundError:  # the old export went away meanwhile: nothing to replace
        aside = None
    if aside is not None:
        stat = aside.stat()
        if (stat.st_dev, stat.st_ino) != target.replaces or not is_export(aside):
            rename_noreplace(aside, output)
            raise _appeared(work, output, "was replaced by another directory")
        _mark(aside)  # from here a SIGKILL leaves a temporary that the next export can prove stale
    try:
        rename_noreplace(work, output)
    except BaseException:
        if aside is not None:
            (aside / MARKER).unlink(missing_ok=True)
            try:
                rename_noreplace(aside, output)
            except FileExistsError:
                raise _appeared(work, output, "appeared", previous=aside) from None
        raise
    if aside is not None:
        shutil.rmtree(aside)
