"""Atomic outputs, run state, and the merge of per-rank prediction shards."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rfcx_lightning.inference import merge_shards
from rfcx_lightning.workspace import RunState, atomic_path, read_npz, write_npz


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"                    # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # and no temp file remains


def test_write_npz_keeps_name_and_dtypes(tmp_path):
    path = write_npz(tmp_path / "p.npz", framewise=np.ones((2, 3, 4), np.float16), ids=np.array(["000316000"]))
    data = read_npz(path)
    assert path.name == "p.npz" and data["framewise"].dtype == np.float16 and data["ids"][0] == "000316000"


def test_run_state_round_trip_and_read_only_ranks(tmp_path):
    state = RunState(tmp_path)
    state.update_fold("bootstrap", 0, status="done", oof=state.relative(tmp_path / "a" / "oof.npz"))
    again = RunState(tmp_path)
    assert again.fold_done("bootstrap", 0) and not again.fold_done("bootstrap", 1)
    assert again.resolve(again.fold("bootstrap", 0)["oof"]) == tmp_path / "a" / "oof.npz"
    other_rank = RunState(tmp_path, writable=False)
    other_rank.update_fold("bootstrap", 1, status="done")
    assert not RunState(tmp_path).fold_done("bootstrap", 1)   # only rank 0 writes


def test_corrupt_state_names_the_file(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="state.json"):
        RunState(tmp_path)


def _shard(path, index, t=5):
    index = np.asarray(index)
    return write_npz(path, index=index, framewise=np.full((len(index), 2, t), 0.5, np.float16),
                     clip=index[:, None].repeat(2, 1).astype(np.float32))


def test_merge_shards_orders_items_and_checks_coverage(tmp_path):
    ids = ["a", "b", "c", "d", "e"]
    shards = [_shard(tmp_path / "s0.npz", [0, 2, 4]), _shard(tmp_path / "s1.npz", [1, 3])]
    merged = read_npz(merge_shards(shards, tmp_path / "m.npz", ids, {}))
    assert merged["recording_id"].tolist() == ids and merged["clip"][:, 0].tolist() == [0, 1, 2, 3, 4]

    _shard(tmp_path / "s1.npz", [1, 3, 3])
    with pytest.raises(RuntimeError, match="exactly once"):
        merge_shards(shards, tmp_path / "bad.npz", ids, {})
    _shard(tmp_path / "s1.npz", [1])
    with pytest.raises(RuntimeError, match="missing"):
        merge_shards(shards, tmp_path / "bad.npz", ids, {})
    assert not (tmp_path / "bad.npz").exists()


def test_atomic_dir_renames_a_complete_folder_and_leaves_nothing_half_written(tmp_path):
    from rfcx_lightning.workspace import atomic_dir, is_temporary

    target = tmp_path / "root"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.csv").write_text("x")
            raise RuntimeError("killed")
    assert not target.exists() and not list(tmp_path.iterdir())              # nothing half-written
    dead = tmp_path / ".root.999999999.abc.tmp"                               # a killed writer's leftovers
    live = tmp_path / f".root.{os.getppid()}.abc.tmp"                         # a live concurrent writer's
    dead.mkdir(), live.mkdir()
    with atomic_dir(target) as tmp:
        assert is_temporary(tmp.name) and tmp.parent == tmp_path
        (tmp / "done.csv").write_text("x")
    assert (target / "done.csv").read_text() == "x"
    assert not dead.exists() and live.exists()
    with pytest.raises(OSError):                                              # a finished root is never replaced
        with atomic_dir(target) as tmp:
            (tmp / "other.csv").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["root", live.name])
