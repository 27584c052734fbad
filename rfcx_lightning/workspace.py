"""The workspace: every output of a run, written atomically, plus ``state.json`` saying what is finished.

A run can die at any moment (pre-emption, OOM, Ctrl-C). Two rules make that harmless:

* every file is written to a temporary name in the same folder and renamed into place (``os.replace`` is
  atomic on POSIX), so a reader never sees half a file;
* ``state.json`` is the single source of truth for what finished: a fold is marked done only after its
  predictions are on disk, so a rerun skips exactly the finished work and redoes nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

STATE_FILE = "state.json"

#: the one temporary-file scheme: ``.<final name>.<random>.tmp`` beside the final file (:func:`atomic_path`)
TEMP_SUFFIX = ".tmp"
_RANK_SHARD = re.compile(r"^.+\.rank\d+\.npz$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block finishes without error.

    Every file the library writes goes through here (workspace outputs, the audio cache, folds.csv), so a
    killed run leaves only names :func:`is_temporary` recognises, and :func:`remove_temporary_files` is
    the one cleaner."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; rename it onto ``path`` only if the block finishes without
    error, else delete it. The folder counterpart of :func:`atomic_path`, for outputs that are folders (a
    generated synthetic root, a converted Raven root, a benchmark's subset root): ``path`` either does not
    exist or is complete.

    The rename succeeds onto nothing or an empty folder. If ``path`` meanwhile got content (a concurrent
    writer finished first) the ``OSError`` propagates, with the temporary folder deleted, and the caller
    decides whether the other writer's result will do. The temporary name carries the writer's pid
    (``.<name>.<pid>.<random>.tmp``, an :func:`is_temporary` name), so :func:`remove_stale_dirs`, run on
    entry, deletes the leftovers of killed writers and never those of a live concurrent one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_dirs(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_dirs(path: str | os.PathLike) -> list[Path]:
    """Delete the :func:`atomic_dir` temporaries of ``path`` whose writer process is gone (or is this one:
    its own earlier attempt); returns them."""
    path = Path(path)
    prefix, removed = f".{path.name}.", []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX) and candidate.is_dir()):
            continue
        try:
            pid = int(name[len(prefix):].split(".", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def rank_shard(path: str | os.PathLike, rank: int) -> Path:
    """``<stem>.rank<k>.npz`` beside ``path``: one DDP rank's part of a prediction file, merged by rank 0."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{int(rank)}.npz")


def is_temporary(name: str) -> bool:
    """A name a killed run may leave behind: an :func:`atomic_path` temporary or a :func:`rank_shard`."""
    return (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or _RANK_SHARD.match(name) is not None


def remove_temporary_files(folder: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files under ``folder`` (recursively) older than ``older_than_s``; returns them.

    Only safe where nothing else is writing, or with an age that a live writer cannot reach (the audio
    cache's concurrent builders write one file in well under a minute)."""
    now, removed = time.time(), []
    for path in Path(folder).rglob("*"):
        if is_temporary(path.name) and path.is_file():
            try:
                if now - path.stat().st_mtime >= older_than_s:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # another process cleaned it or renamed it into place
                pass
    return removed


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame, float_format: str | None = "%.6f") -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)
    return Path(path)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` to a temp name (through a file object, so numpy does not append ``.npz``) and rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return Path(path)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def read_prediction_rows(path: str | os.PathLike, recording_ids, keys, what: str = "",
                         optional=()) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of a stage's prediction npz, rows in the order of ``recording_ids``.

    The one reader of ``*_framewise.npz`` / fold ``oof.npz`` / ``test.npz`` for the pool and the
    post-processing: a missing file, array or recording is a ``ValueError`` naming the file (and ``what``
    it was read for). Scalars (``frames_per_second``) are returned as they are; ``optional`` keys are
    returned as None when the file lacks them.
    """
    path = Path(path)
    suffix = f" ({what})" if what else ""
    if not path.is_file():
        raise ValueError(f"{path}: missing{suffix}; rerun the stage that writes it")
    data = read_npz(path)
    missing = [k for k in ("recording_id", *keys) if k not in data]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}{suffix}; expected a stage's prediction file")
    position = {str(r): i for i, r in enumerate(data["recording_id"])}
    absent = [r for r in recording_ids if str(r) not in position]
    if absent:
        raise ValueError(f"{path}: no prediction for {len(absent)} recording(s), e.g. {absent[:3]}{suffix}")
    rows = np.asarray([position[str(r)] for r in recording_ids], dtype=np.int64)
    out = {k: None for k in optional}
    out.update({k: (data[k][rows] if np.ndim(data[k]) else data[k]) for k in (*keys, *optional) if k in data})
    return out


_ROUND_NAME = re.compile(r"^round(?P<index>\d+)_(?P<kind>\w+)$")


def round_name(index: int, kind: str) -> str:
    """``round<index>_<kind>``: the folder and ``state.json`` key of one pseudo-label round."""
    if index < 0:
        raise ValueError(f"round index must be >= 0, got {index}")
    return f"round{index}_{kind}"


def parse_round_name(name: str) -> tuple[int, str] | None:
    """``(index, kind)`` of a round name, ``None`` for names that are not rounds (e.g. ``bootstrap``)."""
    match = _ROUND_NAME.match(name)
    return (int(match["index"]), match["kind"]) if match else None


def run_finished(entry: Mapping[str, Any]) -> bool:
    """The one definition of a finished stage run: its ``state.json`` entry records ``outputs``.

    A K-fold stage records them in ``finalize`` only after every fold is ``done`` and the merged files
    exist, so a run killed at any point before reads as unfinished (and a standalone round resumes under
    its name); folds alone never make a run finished.
    """
    return bool(entry.get("outputs"))


def run_kind(name: str, entry: Mapping[str, Any]) -> str:
    """A run's stage kind: its recorded config's ``stage.name``, else the kind in its round name, else its name."""
    kind = ((entry.get("config") or {}).get("stage") or {}).get("name")
    if kind:
        return str(kind)
    parsed = parse_round_name(name)
    return parsed[1] if parsed else name


def select_runs(available: Sequence[str], which: str | Sequence[str], what: str,
                error: type[Exception] = ValueError) -> list[str]:
    """The run names a selection key means (``coteach.teachers``, ``postprocess.sources``, ...):
    ``latest`` (the last of ``available``, which is in run order), ``all``, or a name or list of names, each
    of which must be available; they come back in the order given. ``what`` starts the error message
    ("pool has no teacher named" -> "pool has no teacher named ['x']; available: [...]")."""
    if isinstance(which, str) and which in ("latest", "all"):
        return list(available[-1:]) if which == "latest" else list(available)
    names = [which] if isinstance(which, str) else [str(n) for n in which]
    if not names:
        raise error(f"{what} ... an empty list of run names")
    missing = [n for n in names if n not in available]
    if missing:
        raise error(f"{what} {missing}; available: {list(available)}")
    return names


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RunState:
    """``state.json``: what ran, with which config, per-fold status and metrics, and where outputs are.

    Paths inside are stored relative to the workspace so a workspace can be moved or copied.
    Only global rank 0 writes; every rank reads the same file at start-up and so skips the same folds.
    """

    def __init__(self, workspace: str | os.PathLike, writable: bool = True):
        self.workspace = Path(workspace)
        self.path = self.workspace / STATE_FILE
        self.writable = writable
        self.data: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"version": 1, "stages": {}}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path} is not valid JSON ({err}); it is written atomically, so it was "
                             "edited by hand or by another tool. Fix or delete it.") from err

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {"folds": {}, "outputs": {}, "metrics": {}})

    def fold(self, stage: str, fold: int) -> dict[str, Any]:
        return self.stage(stage)["folds"].setdefault(str(fold), {"status": "pending"})

    def fold_done(self, stage: str, fold: int) -> bool:
        return self.fold(stage, fold).get("status") == "done"

    def finished_runs(self, *files: str, references: bool = True) -> list[str]:
        """Finished runs (:func:`run_finished`) that recorded every one of ``files`` among their outputs, in
        the order ``state.json`` first listed them. ``references=False`` leaves out the runs flagged
        ``"joins_pool": false`` (the oracle, trained on the hidden truth), which are yardsticks, never picks."""
        return [name for name, entry in self.data.get("stages", {}).items()
                if run_finished(entry) and all(f in entry["outputs"] for f in files)
                and (references or entry.get("joins_pool") is not False)]

    def relative(self, path: str | os.PathLike) -> str:
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.workspace.resolve()))
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.workspace / path

    def update_fold(self, stage: str, fold: int, **fields: Any) -> None:
        self.fold(stage, fold).update(fields)
        self.save()

    def save(self) -> None:
        if not self.writable:
            return
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.path, self.data)

