"""W&B dashboards, offline: a stage and stage=postprocess write run directories with the expected keys."""

from __future__ import annotations

import struct

import pytest

from rfcx_lightning.run import load_config, run

from .conftest import smoke_args

wandb = pytest.importorskip("wandb")
pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

SECRET = "not-a-real-key-0123456789abcdef0123456789"


def read_records(path):
    """Records of a ``.wandb`` file: a 7-byte header, then LevelDB-log blocks of 32 KiB counted from the
    file start (per chunk: crc32, length, type 1 full / 2 first / 3 middle / 4 last; a block tail shorter
    than a chunk header is padding), each record a protobuf ``Record``."""
    data, block, pos, pending, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def logged_keys(run_dir):
    keys = set()
    for path in run_dir.glob("run-*.wandb"):
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                keys |= {item.key or item.nested_key[0] for item in record.history.item}
            elif kind == "summary":
                keys |= {item.key or item.nested_key[0] for item in record.summary.update}
    return keys


def runs_by_job(workspace):
    runs = {}
    for run_dir in (workspace / "wandb").glob("offline-run-*"):
        for path in run_dir.glob("run-*.wandb"):
            for record in read_records(path):
                if record.WhichOneof("record_type") == "run":
                    runs[(record.run.job_type, record.run.display_name)] = (record.run.run_group, run_dir)
    return runs


@pytest.fixture(scope="module")
def wandb_workspace(smoke_data_root, tmp_path_factory):
    ws = tmp_path_factory.mktemp("wb") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_API_KEY", SECRET)
        run(load_config(smoke_args(ws, smoke_data_root, "logger=wandb")))
        run(load_config(["stage=postprocess"] + smoke_args(ws, smoke_data_root, "logger=wandb")[1:]))
    return ws


def test_runs_are_grouped_by_workspace_with_stage_job_types(wandb_workspace):
    runs = runs_by_job(wandb_workspace)
    assert {("bootstrap", "bootstrap-fold0"), ("bootstrap", "bootstrap-fold1"),
            ("postprocess", "postprocess-dashboard")} <= set(runs)
    assert {group for group, _ in runs.values()} == {wandb_workspace.name}


def test_training_curves_and_dashboard_keys_are_logged(wandb_workspace):
    runs = runs_by_job(wandb_workspace)
    fold = logged_keys(runs[("bootstrap", "bootstrap-fold0")][1])
    assert {"train/loss", "val/masked_auroc", "val/loss"} <= fold
    dashboard = logged_keys(runs[("postprocess", "postprocess-dashboard")][1])
    # charts (wandb.plot.*) are stored as "<key>_table"
    expected = {"lb/test_lwlrap", "lb/table", "lb/test_lwlrap_per_round_table", "pseudo/bootstrap/positives_table",
                "pseudo/positive_rate", "pseudo/mean_confidence", "postprocess/options", "postprocess/factors",
                "postprocess/per_class_ap_table", "examples/spectrograms", "postprocess/test_lwlrap"}
    assert expected <= dashboard, sorted(expected - dashboard)
    images = list((runs[("postprocess", "postprocess-dashboard")][1] / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 3


def test_the_api_key_is_never_written(wandb_workspace):
    for path in wandb_workspace.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
