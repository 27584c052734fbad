"""stage=detect: streamed audio, streamed windows, thresholds, events, and the stage on a smoke workspace."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from rfcx_lightning.data.audio import AudioError
from rfcx_lightning.detection.audio import AudioStream, list_audio, read_whole
from rfcx_lightning.detection.data import WindowStream, prediction_passes
from rfcx_lightning.detection.events import ThresholdRule, choose_threshold, merge_events
from rfcx_lightning.detection.stage import DetectError
from rfcx_lightning.inference import WindowStitcher, combine_scales, predict_framewise, window_probabilities
from rfcx_lightning.metrics import lwlrap
from rfcx_lightning.run import load_config, run

from .conftest import smoke_args


def _tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * 1500 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0) + 0.05 * rng.standard_normal(len(t))
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono, 0.5 * mono[::-1]], 1).astype(np.float32)


# -- audio --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sr,channels,fmt", [(44100, 2, "WAV"), (48000, 1, "FLAC"), (32000, 1, "WAV")])
def test_chunked_reading_equals_whole_reading(tmp_path, sr, channels, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, _tone(7.3, sr, channels), sr, format=fmt, subtype="PCM_16")
    stream = AudioStream(path, 32000, block_seconds=0.7)            # 11 blocks, none a multiple of anything
    chunked = stream.read_all()
    whole = read_whole(path, 32000)
    assert len(chunked) == stream.n_samples == len(whole) == round(len(sf.read(path)[0]) * 32000 / sr)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert len(list(stream.blocks())) > 5


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00not really audio" * 10)
    with pytest.raises(AudioError, match="broken.wav"):
        AudioStream(bad, 32000)
    items = list(WindowStream([bad], [0], 32000, {"mode": "whole"}, 60.0))
    assert len(items) == 1 and "broken.wav" in items[0]["error"]


def test_lists_audio_recursively(tmp_path):
    for name in ("b/x.flac", "a.WAV", "c/d/e.wav", "notes.txt", ".hidden.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_audio(tmp_path)] == ["a.WAV", "b/x.flac", "c/d/e.wav"]


# -- streamed windows = the whole-file pass ----------------------------------------------------------------
def _streamed(model, path, predict, sr, batch_windows=3, block_seconds=1.3):
    """What the detector computes for one file: streamed window batches stitched per pass, then scales."""
    stitchers, n = {}, None
    for item in WindowStream([path], [0], sr, predict, duration_s=12.0, batch_windows=batch_windows,
                             block_seconds=block_seconds):
        assert "error" not in item
        n = item["n"]
        frames, clip = window_probabilities(model, item["wave"])
        stitchers.setdefault(item["pass"], WindowStitcher(n, item["win"])).add(
            item["starts"].tolist(), frames[None], clip[None])
    outputs = [stitchers[p].finish(model.output_frames(n)) for p in sorted(stitchers)]
    if len(outputs) == 1:
        return outputs[0]
    scales = [p.scale for p in prediction_passes(n, sr, predict, 12.0)]
    return combine_scales([f for f, _ in outputs], [c for _, c in outputs], scales)


@pytest.mark.parametrize("predict", [
    {"mode": "windows", "window_seconds": 5.0, "window_hop_seconds": 2.5},
    {"mode": "multiscale", "window_seconds": [2.0, 5.0, 60.0]},
    {"mode": "whole"},
])
def test_streamed_windows_equal_the_whole_file_pass(inference_model, tmp_path, predict):
    sr = 8000
    path = tmp_path / "long.wav"
    sf.write(path, _tone(11.7, sr, seed=3), sr, subtype="FLOAT")
    wave = torch.from_numpy(read_whole(path, sr))[None]
    with torch.no_grad():
        expected_frames, expected_clip = predict_framewise(inference_model, wave, sample_rate=sr, **predict)
        frames, clip = _streamed(inference_model, path, predict, sr)
    assert frames.shape == expected_frames[0:1].shape
    np.testing.assert_allclose(frames[0].float().numpy(), expected_frames[0].float().numpy(), atol=2e-3)
    np.testing.assert_allclose(clip[0].numpy(), expected_clip[0].numpy(), atol=1e-4)


def test_long_whole_mode_files_are_cut_into_recording_length_windows():
    passes = prediction_passes(32000 * 600, 32000, {"mode": "whole"}, 60.0)
    assert [(p.win, p.hop) for p in passes] == [(32000 * 60, 32000 * 30)]
    assert prediction_passes(32000 * 3, 32000, {"mode": "windows", "window_seconds": 10.0,
                                                "window_hop_seconds": 5.0}, 60.0)[0].win == 32000 * 3


# -- events and thresholds ---------------------------------------------------------------------------------
def test_event_merging():
    frames = np.zeros((2, 10), np.float32)
    frames[0, 2:5] = [0.6, 0.9, 0.7]
    frames[0, 7] = 0.8
    frames[1, 8:] = 0.55                                 # runs to the end of the file
    frames[1, 1] = 0.45                                  # below class 1's threshold
    events = merge_events(frames, np.asarray([0.5, 0.5]), frames_per_second=2.0, duration_s=4.8)
    assert events.values.tolist() == [[0, 1.0, 2.5, pytest.approx(0.9)], [0, 3.5, 4.0, pytest.approx(0.8)],
                                      [1, 4.0, 4.8, pytest.approx(0.55)]]
    assert merge_events(frames, np.asarray([0.95, 0.95]), 2.0).empty


def test_peak_onsets_use_the_peak_and_the_offset_learnt_on_tp_boxes():
    """Scores that rise two frames before each call and peak on it: the threshold onset is early, the peak
    onset plus the offset learnt on the TP boxes lands on the call."""
    from rfcx_lightning.detection.events import onset_offset, peak_time

    fps, duration = 2.0, 10.0
    frames = np.zeros((1, 20), np.float32)
    frames[0, 6:11] = [0.6, 0.8, 0.95, 0.8, 0.3]       # a call from 4.0 s: peak frame 8 (centre 4.25 s)
    assert peak_time(frames[0], 6, 10, fps) == pytest.approx(4.25)
    lopsided = np.asarray([0.0, 0.5, 1.0, 0.9, 0.0], np.float32)
    assert 1.25 < peak_time(lopsided, 1, 4, fps) < 1.5      # the parabola leans toward the higher neighbour
    threshold = np.asarray([0.5])
    early = merge_events(frames, threshold, fps, duration)
    assert early["start_s"].tolist() == [3.0] and early["end_s"].tolist() == [5.0]
    boxes = pd.DataFrame({"recording_id": ["a", "a"], "class_index": [0, 0], "t_min": [4.0, 9.0],
                          "t_max": [4.5, 9.5], "is_tp": [True, False]})
    offset, n = onset_offset(frames[None], ["a"], boxes, threshold, duration)
    assert offset.tolist() == [pytest.approx(-0.25)] and n.tolist() == [1]   # the FP box does not count
    peak = merge_events(frames, threshold, fps, duration, onset_offset_s=offset)
    assert peak[["start_s", "end_s"]].values.tolist() == [[pytest.approx(4.0), 5.0]]
    assert merge_events(frames, threshold, fps, duration, onset_offset_s=-9.0)["start_s"].tolist() == [0.0]
    assert merge_events(frames, threshold, fps, duration, onset_offset_s=9.0)["start_s"].tolist() == [4.75]
    far = boxes.assign(t_min=[9.5, 9.0], t_max=[10.0, 9.5])  # no event near the TP box: no offset
    offset, n = onset_offset(frames[None], ["a"], far, threshold, duration)
    assert offset.tolist() == [0.0] and n.tolist() == [0]


def test_onset_offsets_are_learnt_per_class_and_long_calls_get_their_own():
    """A chirp class peaks 0.25 s after its onsets, a 6 s trill class 2.25 s after: each class with enough TP
    boxes gets its own offset (the trill's gap lies beyond 1.5 s but within its box length); a class with
    too few boxes takes the median over all classes."""
    from rfcx_lightning.detection.events import onset_offset

    fps, duration = 2.0, 60.0
    frames = np.zeros((6, 3, 120), np.float32)
    rows = []
    for i in range(6):
        frames[i, 0, 20:23] = [0.6, 0.9, 0.6]              # peak at frame 21: 10.75 s; chirp onset 10.5 s
        frames[i, 1, 60:63] = [0.6, 0.9, 0.6]              # peak at 30.75 s; trill onset 28.5 s, 6 s long
        rows += [("r%d" % i, 0, 10.5, 11.0), ("r%d" % i, 1, 28.5, 34.5)]
    frames[0, 2, 100:103] = [0.6, 0.9, 0.6]                # one box only for class 2
    rows.append(("r0", 2, 50.5, 51.0))
    boxes = pd.DataFrame(rows, columns=["recording_id", "class_index", "t_min", "t_max"]).assign(is_tp=True)
    offset, n = onset_offset(frames, ["r%d" % i for i in range(6)], boxes, np.full(3, 0.5), duration)
    assert n.tolist() == [6, 6, 1]
    assert offset[0] == pytest.approx(-0.25) and offset[1] == pytest.approx(-2.25)
    assert offset[2] == pytest.approx(np.median([-0.25] * 6 + [-2.25] * 6 + [-0.25]))   # pooled
    events = merge_events(frames[0], np.full(3, 0.5), fps, duration, onset_offset_s=offset)
    assert events["start_s"].tolist() == [pytest.approx(10.5), pytest.approx(28.5), pytest.approx(50.5)]


def test_the_clip_gate_keeps_events_of_classes_likely_in_the_file():
    """A class's events survive where its clip score, odds-scaled so the OOF mean maps onto the prior, is at
    least the gate: the same clip score passes for a common class and fails for a rare one."""
    from types import SimpleNamespace

    from rfcx_lightning.detection.stage import DetectStage

    events = pd.DataFrame({"class_index": [0, 1, 1], "start_s": [1.0, 2.0, 3.0], "end_s": [2.0, 3.0, 4.0],
                           "score": [0.6, 0.6, 0.7]})
    prior, reference = np.asarray([0.5, 0.01]), np.asarray([0.5, 0.5])   # class 1 is rare
    stage = SimpleNamespace(gate=(prior, reference), clip_gate=0.3)
    kept = DetectStage.gate_events(stage, events, np.asarray([0.6, 0.7]))
    assert kept["class_index"].tolist() == [0]          # odds 1.5 -> p 0.6 >= 0.3; rare: p 0.023 < 0.3
    assert len(DetectStage.gate_events(SimpleNamespace(gate=None, clip_gate=0.3), events, np.ones(2))) == 3


def test_thresholds_f1_precision_and_number():
    scores = np.asarray([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    is_tp = np.asarray([1, 1, 0, 1, 0, 0, 1], bool)
    f1 = choose_threshold(scores, is_tp, ThresholdRule.parse("f1"))
    # >=0.6: 3 TP 1 FP, F1 = 2*.75*.75/1.5 = .75; >=0.8: F1 = 2*1*.5/1.5 = .667; >=0.3: 4/7 precision, F1 .727
    assert f1["threshold"] == 0.6 and f1["n_tp"] == 4 and f1["n_fp"] == 3
    assert f1["precision"] == pytest.approx(0.75) and f1["recall"] == pytest.approx(0.75)
    precise = choose_threshold(scores, is_tp, ThresholdRule.parse("precision:0.7"))
    assert precise["threshold"] == 0.6 and precise["precision"] >= 0.7        # the lowest reaching 0.7
    strict = choose_threshold(scores, is_tp, ThresholdRule.parse("precision:1"))
    assert strict["threshold"] == 0.8 and strict["recall"] == pytest.approx(0.5)
    unreachable = choose_threshold(np.asarray([0.9, 0.5, 0.2]), np.asarray([0, 1, 0], bool),
                                   ThresholdRule.parse("precision:0.9"))
    assert unreachable["threshold"] > 0.9 and unreachable["recall"] == 0 and "not reached" in unreachable["note"]
    fixed = choose_threshold(scores, is_tp, ThresholdRule.parse("0.45"))
    assert fixed["threshold"] == 0.45 and fixed["recall"] == pytest.approx(0.75)
    none = choose_threshold(np.zeros(0), np.zeros(0, bool), ThresholdRule.parse("f1"))
    assert none["threshold"] == 0.5 and "fallback" in none["note"] and none["n_tp"] == 0
    only_fp = choose_threshold(np.asarray([0.3]), np.asarray([False]), ThresholdRule.parse("precision:0.9"))
    assert only_fp["threshold"] == 0.5 and "no TP box" in only_fp["note"]
    for bad in ("precision:2", "precision:x", "best", "1.5"):
        with pytest.raises(ValueError, match="detect.threshold"):
            ThresholdRule.parse(bad)


# -- the stage on a smoke workspace ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(smoke_data_root, tmp_path_factory):
    ws = tmp_path_factory.mktemp("detect") / "ws"
    run(load_config(smoke_args(ws, smoke_data_root)))
    return ws


@pytest.fixture(scope="module")
def field_folder(smoke_data_root, tmp_path_factory):
    """A 60 s FLAC (a test recording), a 3-minute 44.1 kHz stereo WAV, a 10 s WAV and a corrupt file."""
    folder = tmp_path_factory.mktemp("field")
    test_flac = sorted((smoke_data_root / "test").glob("*.flac"))[0]
    shutil.copy(test_flac, folder / test_flac.name)
    audio, sr = sf.read(test_flac, dtype="float32")
    (folder / "site2" / "night").mkdir(parents=True)
    long = np.concatenate([audio, audio[::-1], audio])
    import soxr

    long = soxr.resample(long, sr, 44100)
    sf.write(folder / "site2" / "night" / "long.wav", np.stack([long, 0.8 * long], 1), 44100, subtype="PCM_16")
    sf.write(folder / "site2" / "short.wav", audio[:10 * sr], sr, subtype="PCM_16")
    (folder / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    return folder


def _detect(workspace, folder, out, *extra):
    return run(load_config(["stage=detect", "preset=smoke", f"workspace={workspace}", f"detect.audio={folder}",
                            f"detect.out={out}", "detect.progress=false", *extra]))


@pytest.fixture(scope="module")
def detected(workspace, field_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return out, _detect(workspace, field_folder, out, "detect.framewise=true")


def test_detect_writes_every_output(detected, workspace, smoke_data_root):
    out, summary = detected
    files = ["corrupt.flac", sorted(p.name for p in (smoke_data_root / "test").glob("*.flac"))[0],
             "site2/night/long.wav", "site2/short.wav"]
    assert summary["files"] == 4 and summary["detected"] == 3 and summary["errors"] == 1
    errors = pd.read_csv(out / "errors.csv")
    assert errors["file"].tolist() == ["corrupt.flac"] and "corrupt.flac" in errors["error"][0]
    detections = pd.read_csv(out / "detections.csv")
    assert list(detections.columns) == ["file", "start_s", "end_s", "class", "species_id", "songtype_id", "score",
                                        "f_min", "f_max"]
    assert set(detections["file"]) <= set(files[1:]) and len(detections) == summary["events"]
    assert (detections["end_s"] > detections["start_s"]).all() and (detections["f_max"] > detections["f_min"]).all()
    long_events = detections[detections["file"] == "site2/night/long.wav"]
    assert long_events["end_s"].max() <= 180.0 + 1e-6
    thresholds = pd.read_csv(out / "thresholds.csv", keep_default_na=False)
    assert len(thresholds) == 24 and {"class", "threshold", "n_tp", "n_fp", "precision", "recall"} <= set(thresholds)
    # every event is above its class threshold, and its score is its max
    merged = detections.merge(thresholds[["class", "threshold"]], on="class")
    assert (merged["score"] >= merged["threshold"] - 1e-3).all()
    for key in (files[1], "site2__night__long.wav", "site2__short.wav"):
        table = pd.read_csv(out / "raven" / f"{key}.selections.txt", sep="\t")
        assert list(table.columns)[:3] == ["Selection", "View", "Channel"]
    assert not (out / "raven" / "corrupt.flac.selections.txt").exists()
    clip = pd.read_csv(out / "clip_scores.csv", dtype={"recording_id": str})
    assert clip["file"].tolist() == files[1:] and clip["recording_id"].tolist() == [files[1][:-5], "long", "short"]
    frames = np.load(out / "framewise" / "site2__night__long.wav.npz")
    assert frames["framewise"].dtype == np.float16 and frames["framewise"].shape[0] == 24
    assert frames["framewise"].shape[1] / float(frames["frames_per_second"]) == pytest.approx(180.0, abs=0.5)
    np.testing.assert_allclose(clip.iloc[1, 2:].to_numpy(float), frames["framewise"].astype(np.float32).max(1),
                               atol=1e-3)
    from rfcx_lightning.orchestration.leaderboard import read_score_table

    assert len(read_score_table(out / "submission.csv", "submission")) == 3
    assert not list(out.rglob(".*.tmp"))


def test_clip_scores_of_the_test_folder_match_the_run(workspace, smoke_data_root, tmp_path):
    out = tmp_path / "out"
    _detect(workspace, smoke_data_root / "test", out, "detect.source=bootstrap")
    ours = pd.read_csv(out / "submission_raw.csv", dtype={"recording_id": str}).set_index("recording_id")
    run_raw = pd.read_csv(workspace / "bootstrap" / "submission_raw.csv", dtype={"recording_id": str})
    truth = pd.read_csv(smoke_data_root / "truth" / "test_labels.csv", dtype={"recording_id": str})
    truth = truth.set_index("recording_id").loc[run_raw["recording_id"]]
    cols = [c for c in run_raw.columns if c != "recording_id"]
    ours = ours.loc[run_raw["recording_id"], cols].to_numpy()
    y = truth[cols].to_numpy() > 0
    assert abs(lwlrap(ours, y) - lwlrap(run_raw[cols].to_numpy(), y)) < 0.005
    np.testing.assert_allclose(ours, run_raw[cols].to_numpy(), atol=0.02)   # the cache's int16 rounding aside


def test_resume_skips_done_files(workspace, field_folder, tmp_path):
    out = tmp_path / "out"
    _detect(workspace, field_folder, out)
    parts = {p.name: p.stat().st_mtime_ns for p in (out / ".parts").glob("*.npz")}
    assert len(parts) == 3 and (out / ".parts" / "corrupt.flac.error.json").exists()
    (out / ".parts" / "site2__short.wav.npz").unlink()           # as if killed before the last file
    (out / "detections.csv").unlink()
    _detect(workspace, field_folder, out, "detect.threshold=0.3")     # re-thresholds from the parts
    again = {p.name: p.stat().st_mtime_ns for p in (out / ".parts").glob("*.npz")}
    assert set(again) == set(parts)
    assert all(again[k] == parts[k] for k in parts if k != "site2__short.wav.npz")
    assert again["site2__short.wav.npz"] != parts["site2__short.wav.npz"]
    thresholds = pd.read_csv(out / "thresholds.csv")
    assert (thresholds["threshold"] == 0.3).all() and (out / "detections.csv").exists()


def test_errors_and_bad_settings_name_the_culprit(workspace, field_folder, tmp_path):
    with pytest.raises(DetectError, match="detect.audio=PATH"):
        run(load_config(["stage=detect", "preset=smoke", f"workspace={workspace}"]))
    with pytest.raises(DetectError, match="no state.json"):
        _detect(tmp_path / "nowhere", field_folder, tmp_path / "x")
    with pytest.raises(DetectError, match="corrupt.flac"):
        _detect(workspace, field_folder, tmp_path / "a", "detect.on_error=fail")
    with pytest.raises(DetectError, match="detect.source='nope'"):
        _detect(workspace, field_folder, tmp_path / "b", "detect.source=nope")
    with pytest.raises(ValueError, match="detect.threshold"):
        _detect(workspace, field_folder, tmp_path / "c", "detect.threshold=precision:7")
    with pytest.raises(DetectError, match="detect.onset='first'"):
        _detect(workspace, field_folder, tmp_path / "c", "detect.onset=first")
    with pytest.raises(DetectError, match="detect.clip_gate=1.5"):
        _detect(workspace, field_folder, tmp_path / "c", "detect.clip_gate=1.5")
    out = tmp_path / "d"
    _detect(workspace, field_folder / "site2", out)
    meta = json.loads((out / ".parts" / "meta.json").read_text())
    meta["source"] = "round9_other"
    (out / ".parts" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DetectError, match="another detector"):
        _detect(workspace, field_folder / "site2", out)


def test_score_events_matches_onsets_one_to_one():
    from rfcx_lightning.detection.events import score_events

    calls = pd.DataFrame({"recording_id": ["a", "a", "b"], "species_id": [1, 1, 2], "t_min": [1.0, 5.0, 2.0]})
    events = pd.DataFrame({"recording_id": ["a", "a", "a", "b"], "species_id": [1, 1, 1, 1],
                           "start_s": [1.2, 1.3, 9.0, 2.0]})
    table = score_events(events, calls, 0.5).set_index("species_id")
    assert table.loc[1, "matched"] == 1 and table.loc[1, "precision"] == pytest.approx(0.25)   # 1 of 4 events
    assert table.loc[1, "recall"] == pytest.approx(0.5) and table.loc[2, "recall"] == 0.0      # wrong species


@pytest.mark.slow
def test_two_process_ddp_splits_the_files(workspace, field_folder, detected, tmp_path):
    from .conftest import run_cli_subprocess

    out = tmp_path / "ddp"
    result = run_cli_subprocess(["stage=detect", "preset=smoke", f"workspace={workspace}",
                                 f"detect.audio={field_folder}", f"detect.out={out}", "detect.progress=false",
                                 "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("detect (bootstrap): 3 files") == 1                 # merged once, on rank 0
    single = pd.read_csv(detected[0] / "clip_scores.csv", dtype={"recording_id": str})
    ddp = pd.read_csv(out / "clip_scores.csv", dtype={"recording_id": str})
    assert ddp["file"].tolist() == single["file"].tolist()                          # each file once, in order
    np.testing.assert_allclose(ddp.iloc[:, 2:].to_numpy(), single.iloc[:, 2:].to_numpy(), atol=1e-5)
    assert pd.read_csv(out / "errors.csv")["file"].tolist() == ["corrupt.flac"]


@pytest.mark.slow
def test_detection_benchmark_runs_on_tiny_settings(tmp_path, smoke_data_root):
    import math

    from rfcx_lightning.bench.cli import run_benchmarks

    report = run_benchmarks(["--size", "tiny", "--threads", "1", "--only", "detect", "--workspace",
                             str(tmp_path / "ws"), "--json", str(tmp_path / "out" / "bench.json"), "--markdown",
                             str(tmp_path / "out" / "bench.md"), "preset=smoke", f"data.root={smoke_data_root}",
                             f"audio.cache_dir={smoke_data_root.parent / 'cache'}"])
    result = report["results"]["detect"]
    assert result["files"] == 6 and result["audio_hours"] == pytest.approx(0.1, abs=1e-3)
    for key in ("audio_hours_per_wall_hour", "test_path_audio_hours_per_wall_hour", "detect_vs_test_path_time",
                "peak_rss_ratio_long_vs_1min"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert set(result["memory"]) == {"1", "2"} and result["memory"]["2"]["peak_rss_main_mb"] > 100
    assert "detect: peak RSS, 1 min vs 2 min file" in (tmp_path / "out" / "bench.md").read_text()


def test_long_file_grid_from_the_time_stride_equals_a_dry_run(inference_model, workspace):
    from rfcx_lightning.detection.stage import load_fold_modules, predictor_of, whole_grid_frames
    from rfcx_lightning.workspace import RunState

    band = predictor_of(load_fold_modules(RunState(workspace, writable=False), "bootstrap")[0])
    for net, sr in ((inference_model, 8000), (band, 32000)):
        for seconds in (61.3, 187.0):
            n = int(seconds * sr)
            assert whole_grid_frames(net, n, dry_run_samples=0) == net.output_frames(n)


def test_source_resolution(tmp_path):
    from rfcx_lightning.detection.stage import load_fold_modules, resolve_source
    from rfcx_lightning.workspace import RunState

    def run(kind, done=True, **extra):
        return {"config": {"stage": {"name": kind}}, "metrics": {},
                "outputs": {"submission.csv": f"{kind}/submission.csv"} if done else {},
                "folds": {"0": {"status": "done" if done else "trained"}}, **extra}

    state = RunState(tmp_path)
    state.data["stages"] = {"bootstrap": run("bootstrap"), "round1_coteach": run("coteach"),
                            "round2_noisy_student": run("noisy_student", done=False),
                            "oracle": run("oracle", joins_pool=False), "template": run("template"),
                            "postprocess": {"config": {"stage": {"name": "postprocess"}}, "folds": {}}}
    assert resolve_source(state, "best") == "template"              # the newest finished run
    del state.data["stages"]["template"]
    assert resolve_source(state, "best") == "round1_coteach"        # not the unfinished round, not the oracle
    assert resolve_source(state, "oracle") == "oracle"              # named explicitly it is allowed
    state.data["pipeline"] = {"best": "bootstrap"}
    assert resolve_source(state, "best") == "bootstrap"
    state.data["pipeline"] = {"best": "round3_ensemble"}
    with pytest.raises(DetectError, match="ensemble"):
        resolve_source(state, "best")
    with pytest.raises(DetectError, match="round2_noisy_student.*not a finished"):
        resolve_source(state, "round2_noisy_student")
    with pytest.raises(DetectError, match="postprocess.*not a finished"):
        resolve_source(state, "postprocess")
    state.data["stages"]["template"] = run("template")
    with pytest.raises(DetectError, match="template-matching run"):
        load_fold_modules(state, "template")
