"""Recordings of any length (``data.duration_s=auto``): boxes checked against their own recording, each
recording predicted on its own samples, frames past its end 0, and a whole stage on a Raven folder whose
recordings differ in length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rfcx_lightning.data.annotations import AnnotationError, DataRoot, load_annotations
from rfcx_lightning.data.raven import write_selection_table
from rfcx_lightning.inference import predict_framewise, predict_valid

from .conftest import run_cli_subprocess
from .test_raven import SR, detections, write_recording

#: the recordings of the Raven folder below: train (with a table) and test, each its own length in seconds
LENGTHS = {"site0": 14.0, "site1": 20.0, "site2": 9.0, "site3": 16.0, "site4": 24.0, "site5": 11.0,
           "site6": 7.0, "site7": 18.0}
TRAIN = ("site0", "site1", "site2", "site3", "site4", "site5")


def test_a_short_recording_in_a_padded_batch_is_predicted_as_if_alone(inference_model):
    torch.manual_seed(1)
    wave = torch.randn(3, 8000 * 12)
    n_valid = torch.tensor([8000 * 12, 8000 * 5, 8000 * 12])
    wave[1, 8000 * 5:] = 0                                   # a 5 s recording padded to the batch's 12 s

    def predict(w):
        return predict_framewise(inference_model, w, mode="whole")

    framewise, clip = predict_valid(predict, wave, n_valid)
    full_frames, full_clip = predict(wave)
    alone_frames, alone_clip = predict(wave[1:2, :8000 * 5])
    t = alone_frames.shape[-1]
    assert framewise.shape == full_frames.shape and t < framewise.shape[-1]
    assert torch.equal(framewise[[0, 2]], full_frames[[0, 2]]) and torch.equal(clip[[0, 2]], full_clip[[0, 2]])
    assert torch.equal(framewise[1, :, :t], alone_frames[0]) and torch.equal(clip[1], alone_clip[0])
    assert not framewise[1, :, t:].any()                     # past its end: 0, never a max
    assert torch.equal(predict_valid(predict, wave, None)[0], full_frames)


def test_windows_mode_takes_a_recording_shorter_than_a_window_whole(inference_model):
    wave = torch.randn(1, 8000 * 3)
    windows = predict_framewise(inference_model, wave, mode="windows", window_seconds=5.0,
                                window_hop_seconds=2.5, sample_rate=8000)
    whole = predict_framewise(inference_model, wave, mode="whole")
    assert torch.equal(windows[0], whole[0]) and torch.equal(windows[1], whole[1])


def test_boxes_are_checked_against_their_own_recordings_end(tmp_path):
    csv = tmp_path / "train_tp.csv"
    csv.write_text("recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"
                   "a,0,1,5.0,500,8.0,900\n"
                   "b,0,1,15.0,500,19.0,900\n")
    lengths = {"a": 30.0, "b": 18.0}
    with pytest.raises(AnnotationError, match=r"train_tp.csv: line 3, field 't_max': after the end of the 18.0 s"):
        load_annotations(csv, is_tp=True, audio_dir=None, species_ids=[0], duration_s=lengths)
    ok = load_annotations(csv, is_tp=True, audio_dir=None, species_ids=[0], duration_s={"a": 30.0, "b": 19.02})
    assert ok["t_max"].tolist() == [8.0, 19.0]


def test_recording_seconds_reads_the_headers_and_names_a_corrupt_file(tmp_path):
    write_recording(tmp_path / "train" / "r1.flac", seconds=7.5)
    assert DataRoot(tmp_path).recording_seconds("train") == {"r1": 7.5}
    (tmp_path / "train" / "r2.flac").write_bytes(b"not audio")
    with pytest.raises(AnnotationError, match=r"r2.flac: cannot read the audio header"):
        DataRoot(tmp_path).recording_seconds("train")


def raven_folder(root: Path) -> Path:
    for k, (rid, seconds) in enumerate(LENGTHS.items()):
        write_recording(root / f"{rid}.flac", seconds=seconds, seed=k)
        if rid in TRAIN:
            species = ("frog", "owl") if k % 2 == 0 else ("owl", "frog")
            boxes = detections(2, seed=k, species=species)
            boxes["begin_s"] = boxes["begin_s"] * (seconds - 6.0) / 50.0      # inside this recording
            boxes["end_s"] = np.minimum(boxes["begin_s"] + 2.0, seconds - 0.5)
            write_selection_table(root / f"{rid}.Table.1.selections.txt", boxes)
    return root


def test_a_raven_folder_of_recordings_of_different_lengths_trains_and_predicts(tmp_path):
    """bootstrap, template and a co-teaching student of both on recordings of 7-24 s: crops inside each
    recording, predictions on the longest recording's grid with each recording's own length beside them
    and 0 past its end."""
    root = raven_folder(tmp_path / "raven")
    ws = tmp_path / "ws"
    common = ["preset=smoke", "data=raven", f"data.root={root}", f"data.native_sample_rate={SR}", f"workspace={ws}",
              "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    result = run_cli_subprocess(["stage=pipeline", "lb=none", *common], timeout=400)   # template, bootstrap, coteach
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for run in ("round0_template", "round1_bootstrap", "round2_coteach"):
        for split, ids in (("test", ["site6", "site7"]), ("oof", list(TRAIN))):
            with np.load(ws / run / f"{split}_framewise.npz") as npz:
                assert npz["recording_id"].tolist() == ids
                np.testing.assert_allclose(npz["seconds"], [LENGTHS[r] for r in ids], atol=1e-3)
                frames, fps = npz["framewise"].astype(np.float32), float(npz["frames_per_second"])
            assert frames.shape[-1] == pytest.approx(24.0 * fps, abs=2)      # the longest recording's grid
            for row, rid in enumerate(ids):
                end = int(np.ceil(LENGTHS[rid] * fps)) + 1
                assert not frames[row, :, end:].any(), f"{run} {rid}: frames past its end"
                assert frames[row, :, :end - 2].any()
        submission = pd.read_csv(ws / run / "submission.csv", dtype={"recording_id": str})
        assert submission["recording_id"].tolist() == ["site6", "site7"]
        assert np.isfinite(submission[["s0", "s1"]].to_numpy()).all()


def test_synthetic_data_refuses_auto(tmp_path):
    from rfcx_lightning.config import load_config
    from rfcx_lightning.stages.context import resolve_data_root

    cfg = load_config(["preset=smoke", f"workspace={tmp_path / 'ws'}", f"data.root={tmp_path / 'data'}",
                       "data.duration_s=auto"])
    with pytest.raises(ValueError, match="data.duration_s=auto is for recordings of different lengths"):
        resolve_data_root(cfg, True)
    assert not (tmp_path / "data").exists()
