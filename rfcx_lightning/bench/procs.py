"""Run the CLI in a child process and record the peak memory of its whole process tree.

``ru_maxrss`` alone would miss DataLoader workers and DDP ranks (separate processes) and mix anonymous
memory with file-backed pages: the memory-mapped audio cache shows up in RSS as pages are touched, but
those are page cache the kernel can drop, not memory the run needs. So a sampler thread reads
``/proc/<pid>/status`` of the child and all its descendants and tracks anonymous and file-backed RSS
separately.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

_KB = 1024


def _children_map() -> dict[int, list[int]]:
    """ppid -> child pids, from /proc/*/stat."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant alive now."""
    tree, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def memory_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process in bytes (empty if it has exited)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    fields[key] = int(value.split()[0]) * _KB
    except OSError:
        return {}
    return fields


@dataclass
class TreePeaks:
    """Peaks over the run, in bytes; sums are over the process tree at one sampling instant."""

    anon: int = 0          # private (anonymous) memory of all processes together: what the run needs
    rss: int = 0           # anon + file-backed (mapped cache pages, shared libraries) of all processes
    main_hwm: int = 0      # the main process's own high-water mark (VmHWM)
    processes: int = 0     # most processes seen at once (main + workers + ranks)
    samples: int = 0

    def update(self, root: int) -> None:
        pids = process_tree(root)
        stats = [s for s in (memory_status(p) for p in pids) if s]
        if not stats:
            return
        self.anon = max(self.anon, sum(s.get("RssAnon", 0) for s in stats))
        self.rss = max(self.rss, sum(s.get("VmRSS", 0) for s in stats))
        self.main_hwm = max(self.main_hwm, memory_status(root).get("VmHWM", 0))
        self.processes = max(self.processes, len(stats))
        self.samples += 1

    def as_mb(self) -> dict[str, float]:
        mb = 1024.0 ** 2
        return {"peak_anon_tree_mb": self.anon / mb, "peak_rss_tree_mb": self.rss / mb,
                "peak_rss_main_mb": self.main_hwm / mb, "max_processes": self.processes,
                "samples": self.samples}


@dataclass
class ChildRun:
    cmd: list[str]
    returncode: int
    wall_s: float
    peaks: TreePeaks
    log: Path
    extra: dict = field(default_factory=dict)


def run_cli(args: Sequence[str], log: Path, **kwargs) -> ChildRun:
    """``python -m rfcx_lightning.run ARGS`` with its output in ``log``, memory tracked."""
    return run_tracked([sys.executable, "-m", "rfcx_lightning.run", *args], log, **kwargs)


def run_tracked(cmd: Sequence[str], log: Path, cwd: Path | None = None, poll_s: float = 0.05,
                timeout_s: float = 3600.0) -> ChildRun:
    """Run ``cmd`` with its output in ``log``, sampling its process tree's memory; fails with the log's tail."""
    cmd = list(cmd)
    log.parent.mkdir(parents=True, exist_ok=True)
    peaks = TreePeaks()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peaks.update(proc.pid)
                stop.wait(poll_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            stop.set()
            sampler.join()
        wall = time.perf_counter() - start
    if returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {returncode}; log {log}:\n{tail}")
    return ChildRun(cmd, returncode, wall, peaks, log)
