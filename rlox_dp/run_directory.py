"""A training run's directory: who owns it, a lock against two live writers, step checkpoints.

Layout of a run directory (``Trainer(log_dir=...)``)::

    run.json                               run id, algorithm, env, what it was resumed from
    .lock                                  {"pid", "host", "start", "token"} while a process trains
    events.out.tfevents.*                  TensorBoard
    checkpoints/step_000050.safetensors    the newest ``keep_last_n`` step-numbered checkpoints
    checkpoints/last.safetensors           the newest checkpoint: a hard link to it (a copy where
                                           the file system has no hard links), swapped atomically

Rules (see the README, "Checkpoints and resuming"):

- A run writes only into an empty (or new) directory, or into the directory of *its own* run
  (same run id: a resumed run continues its lineage), and never when that directory holds a
  checkpoint with a higher step than the one training continues from. ``overwrite=True`` removes
  a previous run's checkpoints, TensorBoard events and ``run.json`` first (other files are kept).
- One live process per run directory: ``.lock`` records pid, host and process start time. A lock
  whose process is gone (``kill -9``, a crash) is stale and replaced with a warning; a lock of
  another host cannot be checked and must be removed by hand (the error says so).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from rlox_dp.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    fsync_directory,
    read_checkpoint_header,
)
from rlox_dp.runtime import HOSTNAME, process_alive, process_start_time

__all__ = [
    "LAST_NAME",
    "RunDirectoryError",
    "RunLock",
    "check_run_dir",
    "check_writable_dir",
    "claim_run_dir",
    "default_run_dir",
    "enter_run_dir",
    "legacy_run_id",
    "newest_checkpoint_step",
    "run_dir_for",
    "step_checkpoints",
    "write_step_checkpoint",
]

logger = logging.getLogger("rlox_dp")

LAST_NAME = "last.safetensors"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
_STEP_RE = re.compile(r"step_(\d+)\.safetensors")
#: a lock file that cannot be parsed (its writer died mid-write) is stale after this long.
_UNREADABLE_LOCK_AGE_S = 10.0


class RunDirectoryError(ValueError):
    """A run directory that cannot be used: another run's, newer checkpoints, locked, not writable."""


def default_run_dir(parent: str | os.PathLike, algorithm: str, env_id: str) -> Path:
    """``<parent>/<algorithm>-<env>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... if that exists)."""
    base = Path(parent) / f"{algorithm}-{env_id.replace('/', '_').replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_dir_for(log_dir: str | os.PathLike | None, resumed_log_dir: str | os.PathLike | None,
                algorithm: str, env_id: str) -> Path:
    """``log_dir``, or (``None``) a new :func:`default_run_dir`: beside ``resumed_log_dir`` (the
    directory of the run this one resumes) when given, so resuming never replaces anything, else
    under ``runs``."""
    if log_dir is not None:
        return Path(log_dir)
    return default_run_dir(Path(resumed_log_dir).parent if resumed_log_dir else "runs", algorithm, env_id)


def step_checkpoints(run_dir: str | os.PathLike) -> dict[int, Path]:
    """Step -> ``checkpoints/step_<step>.safetensors`` of a run directory, in step order."""
    folder = Path(run_dir) / "checkpoints"
    found = {}
    if folder.is_dir():
        for p in folder.iterdir():
            match = _STEP_RE.fullmatch(p.name)
            if match:
                found[int(match.group(1))] = p
    return dict(sorted(found.items()))


def newest_checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    """Highest step among the run's checkpoints (step-numbered ones and ``last``), or ``None``."""
    steps = list(step_checkpoints(run_dir))
    last = Path(run_dir) / "checkpoints" / LAST_NAME
    if last.is_file():
        try:
            steps.append(int(read_checkpoint_header(last)["step"]))
        except (CheckpointError, OSError, KeyError, TypeError, ValueError):
            pass  # an unreadable last: the step-numbered files decide
    return max(steps) if steps else None


def _run_id_of(run_dir: Path) -> str | None:
    """The run id recorded in ``run.json``; for a directory written before run ids existed,
    ``"legacy:<resolved path>"`` when it holds a checkpoint, else ``None``."""
    try:
        return str(json.loads((run_dir / RUN_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if (run_dir / "checkpoints").is_dir():
        return legacy_run_id(run_dir)
    return None


def legacy_run_id(log_dir: str | os.PathLike) -> str:
    """The run id given to a run written before run ids existed: its resolved directory."""
    return f"legacy:{Path(log_dir).resolve()}"


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(name: str, path: str | os.PathLike) -> Path:
    """Create folder ``path`` if needed and check it can be written (videos, logs).

    Raises:
        ValueError: naming the argument ``name``, when ``path`` is a file or not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{name} {str(path)!r} cannot be created: {err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(path)!r} is not writable")
    return path


def check_run_dir(run_dir: str | os.PathLike, run_id: str, step: int, *, overwrite: bool,
                  check_writable: bool = True) -> None:
    """Raise :class:`RunDirectoryError` unless run ``run_id`` at ``step`` may write ``run_dir``.

    Allowed: a missing or empty directory; the run's own directory without a checkpoint of a
    higher step; any directory with ``overwrite=True``. Nothing is written.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"log_dir {str(run_dir)!r} is a file, not a directory")
    if check_writable:
        base = _nearest_existing(run_dir)
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise RunDirectoryError(
                f"log_dir {str(run_dir)!r} cannot be written: {str(base)!r} is "
                f"{'not a directory' if not base.is_dir() else 'not writable'}; choose another log_dir"
            )
    if not run_dir.is_dir() or overwrite or all(p.name == LOCK_FILE for p in run_dir.iterdir()):
        return  # new, empty (but for a lock, checked by RunLock), or to be overwritten
    owner = _run_id_of(run_dir)
    if owner != run_id:
        what = "another run" if owner is not None else "files that are not this run's"
        raise RunDirectoryError(
            f"log_dir {str(run_dir)!r} already holds {what}: writing there would replace its "
            "checkpoints and mix its TensorBoard logs. Choose a new log_dir, resume that run from "
            "its checkpoints/last.safetensors, or pass overwrite=True (CLI: --overwrite) to replace it"
        )
    newest = newest_checkpoint_step(run_dir)
    if newest is not None and newest > step:
        raise RunDirectoryError(
            f"log_dir {str(run_dir)!r} holds a newer checkpoint of this run (step {newest}) than the "
            f"one training continues from (step {step}); writing there would replace it. Resume from "
            f"{str(run_dir / 'checkpoints' / LAST_NAME)!r}, or give another log_dir"
        )


def _clear_previous_run(run_dir: Path) -> None:
    """``overwrite=True``: remove what a run writes (checkpoints, TensorBoard events, run.json)."""
    removed = []
    for p in run_dir.iterdir():
        if p.name.startswith("events.out.tfevents.") or p.name == RUN_FILE:
            p.unlink()
            removed.append(p.name)
    folder = run_dir / "checkpoints"
    if folder.is_dir():
        for p in folder.iterdir():
            if _STEP_RE.fullmatch(p.name) or p.name == LAST_NAME or p.name.endswith(".tmp"):
                p.unlink()
                removed.append(f"checkpoints/{p.name}")
        if not any(folder.iterdir()):
            folder.rmdir()
    if removed:
        logger.warning("overwrite: removed %d file(s) of the previous run in %s", len(removed), run_dir)


def claim_run_dir(run_dir: str | os.PathLike, run_id: str, step: int, *, overwrite: bool,
                  info: dict[str, Any]) -> None:
    """Check ``run_dir`` (:func:`check_run_dir`), clear a previous run under ``overwrite`` and
    record this run in ``run.json`` (``info``: algorithm, env, resumed_from ...).

    Call with the directory's :class:`RunLock` held.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, run_id, step, overwrite=overwrite, check_writable=False)
    if overwrite and run_dir.is_dir() and _run_id_of(run_dir) not in (None, run_id):
        _clear_previous_run(run_dir)
    if _run_id_of(run_dir) != run_id or not (run_dir / RUN_FILE).is_file():
        atomic_write_bytes(run_dir / RUN_FILE, json.dumps({"run_id": run_id, **info}, indent=2).encode())


class RunLock:
    """``<run_dir>/.lock`` held while one process trains there (a context manager).

    The file holds the pid, host and process start time of its owner. Acquiring replaces a stale
    lock (owner on this host no longer running, or a pid now used by another process) with a
    warning, and raises :class:`RunDirectoryError` for a live one.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": HOSTNAME, "start": process_start_time(os.getpid()),
                "token": self.token, "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _stale(self, owner: dict[str, Any] | None) -> bool:
        if owner is None:  # unreadable: its writer died between creating and filling it
            try:
                return time.time() - self.path.stat().st_mtime > _UNREADABLE_LOCK_AGE_S
            except FileNotFoundError:
                return True
        if owner.get("host") != HOSTNAME:
            return False  # cannot check another machine's processes
        pid = owner.get("pid")
        if not isinstance(pid, int) or not process_alive(pid):
            return True
        start = owner.get("start")
        return start is not None and process_start_time(pid) not in (None, start)  # pid reused

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def acquire(self) -> RunLock:
        """Take the lock (creating the run directory); see the class docstring."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirectoryError(f"cannot create run directory {str(self.run_dir)!r}: {err}; "
                                    "choose another log_dir") from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._read_owner()
                if not self._stale(owner):
                    who = (f"process {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')})"
                           if owner else "another process")
                    raise RunDirectoryError(
                        f"run directory {str(self.run_dir)!r} is in use by {who}: two processes must not "
                        f"write one run. If that process is no longer running, delete {str(self.path)!r}"
                    ) from None
                logger.warning("removing the stale lock of a process that no longer runs (%s) in %s",
                               owner, self.run_dir)
                self.path.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise RunDirectoryError(f"cannot write in run directory {str(self.run_dir)!r}: {err}; "
                                        "choose another log_dir") from None
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self.held = True
            return self
        raise RunDirectoryError(f"could not take the lock {str(self.path)!r} (it keeps reappearing)")

    def release(self) -> None:
        """Remove the lock file if it is still this object's."""
        if self.held:
            owner = self._read_owner()
            if owner is not None and owner.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def enter_run_dir(run_dir: str | os.PathLike, run_id: str, step: int, *, overwrite: bool,
                  info: dict[str, Any]) -> RunLock:
    """Lock ``run_dir`` (:class:`RunLock`) and claim it for run ``run_id`` at ``step``
    (:func:`claim_run_dir`); returns the held lock (released again if the claim fails)."""
    lock = RunLock(run_dir).acquire()
    try:
        claim_run_dir(run_dir, run_id, step, overwrite=overwrite, info=info)
    except BaseException:
        lock.release()
        raise
    return lock


def _point_last_at(target: Path) -> Path:
    """Atomically make ``checkpoints/last.safetensors`` the same file as ``target``: a hard link
    (no extra disk space) swapped in by rename, or a copy where hard links are unsupported."""
    last = target.with_name(LAST_NAME)
    tmp = target.with_name(f".{LAST_NAME}.{uuid.uuid4().hex[:8]}.link.tmp")
    try:
        os.link(target, tmp)
    except OSError:  # no hard links here (FAT, some network file systems): copy
        shutil.copyfile(target, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    try:
        os.replace(tmp, last)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(last.parent)
    return last


def write_step_checkpoint(run_dir: str | os.PathLike, step: int, write, keep_last_n: int | None) -> Path:
    """Write ``checkpoints/step_<step>.safetensors`` with ``write(path)``, point ``last`` at it and
    delete all but the newest ``keep_last_n`` step-numbered checkpoints (``None``: keep all).

    Returns:
        The step-numbered path.
    """
    folder = Path(run_dir) / "checkpoints"
    path = folder / f"step_{step:06d}.safetensors"
    write(path)
    try:
        _point_last_at(path)
    except OSError as err:  # e.g. Windows, where another process has last.safetensors open
        logger.warning("could not point %s at %s (%s); the step checkpoint is complete",
                       LAST_NAME, path, err)
    for p in folder.glob(f".{LAST_NAME}.*.link.tmp"):  # a link swap interrupted by kill -9
        p.unlink(missing_ok=True)
    if keep_last_n is not None:
        steps = step_checkpoints(run_dir)
        for old in [p for s, p in steps.items() if s != step][: max(0, len(steps) - keep_last_n)]:
            old.unlink(missing_ok=True)
    return path
