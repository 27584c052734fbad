"""Resume after SIGKILL: a pipeline killed in its second round finishes on rerun without redoing work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rfcx_lightning.run import main

from .conftest import REPO, smoke_args

pytestmark = pytest.mark.slow


def leftovers(ws):
    """Temporary files of the atomic writers (workspace.atomic_path: ``.<name>.<8 chars>.tmp``, which the
    audio cache and folds.csv use too), older schemes (``.<name>.tmp-<pid>-<hex>``) and per-rank shards."""
    return [p for p in ws.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name or ".rank" in p.name]


def read_state(ws):
    try:
        return json.loads((ws / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):   # not written yet (it is replaced atomically)
        return {}


def test_killed_pipeline_resumes_where_it_stopped(tmp_path, smoke_data_root):
    ws = tmp_path / "ws"
    args = smoke_args(ws, smoke_data_root, "lb=holdout", "pipeline.sequence=[bootstrap,bootstrap]",
                      stage="pipeline", few_batches=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "rfcx_lightning.run", *args], cwd=str(REPO), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        # the second round's stage records itself in state.json right before its first fold starts
        while "round1_bootstrap" not in read_state(ws).get("stages", {}):
            assert proc.poll() is None, f"the pipeline ended (rc {proc.returncode}) before round 1 started"
            assert time.monotonic() < deadline, "round 1 never started"
            time.sleep(0.1)
        time.sleep(1.0)                                   # inside round 1's first fold
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    state = read_state(ws)
    assert state["pipeline"]["rounds"]["round0_bootstrap"]["status"] == "done"
    assert state["pipeline"]["rounds"]["round1_bootstrap"]["status"] == "running"
    assert not state["stages"]["round1_bootstrap"]["outputs"]
    round0 = sorted((ws / "round0_bootstrap").rglob("*.ckpt")) + sorted((ws / "round0_bootstrap").rglob("*.npz"))
    assert len(round0) >= 6
    mtimes = {p: p.stat().st_mtime_ns for p in round0}
    # what a kill during an atomic write leaves behind: the temporary sibling, never the target
    stale = ws / "round1_bootstrap" / ".submission.csv.k1ll3d00.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("recording_id,s0\nhalf")

    assert main(args) == 0

    state = read_state(ws)
    rounds = state["pipeline"]["rounds"]
    assert [rounds[n]["status"] for n in ("round0_bootstrap", "round1_bootstrap")] == ["done", "done"]
    assert rounds["round0_bootstrap"]["attempts"] == 1 and rounds["round1_bootstrap"]["attempts"] == 2
    assert {p: p.stat().st_mtime_ns for p in round0} == mtimes          # round 0 was not redone
    assert [state["stages"]["round1_bootstrap"]["folds"][str(k)]["status"] for k in range(2)] == ["done", "done"]
    assert (ws / "round1_bootstrap" / "submission.csv").exists() and (ws / "submission.csv").exists()
    assert rounds["round1_bootstrap"]["lb"] is not None
    assert leftovers(ws) == []
