"""The oracle (bootstrap on every true call) and the label-efficiency report (``stage=report``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rfcx_lightning.data.annotations import ClassScheme, DataRoot
from rfcx_lightning.data.datamodule import RecordingSet, box_recordings
from rfcx_lightning.data.labels import BoxIndex
from rfcx_lightning.metrics import lwlrap
from rfcx_lightning.models.bands import class_bands_from_boxes
from rfcx_lightning.postprocessing import odds_scale_to_prior
from rfcx_lightning.postprocessing.sources import finished_stages
from rfcx_lightning.pseudo.pool import PseudoLabelPool
from rfcx_lightning.run import load_config, main
from rfcx_lightning.stages.bootstrap import BootstrapStage
from rfcx_lightning.stages.context import StageContext
from rfcx_lightning.stages.oracle import OracleStage, oracle_boxes, truth_call_boxes
from rfcx_lightning.stages.report import build_report, collect_runs
from rfcx_lightning.workspace import RunState, write_npz

from .conftest import smoke_args

TRAIN, TEST, SPECIES = ["r1", "r2", "r3"], ["a", "b", "c"], [0, 1, 2]
COLS = [f"s{s}" for s in SPECIES]


# -- the oracle ----------------------------------------------------------------------------------------------
def write_calls(root: Path) -> pd.DataFrame:
    """A truth/calls.csv with train and test calls; the train calls sit in other bands than the annotations."""
    calls = pd.DataFrame([
        ("train", "r1", 0, 1, 1.0, 2.0, 5000.0, 6000.0, 3.0, "tp"),
        ("train", "r1", 1, 1, 10.0, 12.5, 300.0, 900.0, -2.0, "none"),
        ("train", "r2", 2, 1, 58.0, 60.2, 2000.0, 2500.0, 1.0, "none"),     # runs past the end: clipped
        ("train", "r3", 0, 1, 30.0, 31.0, 5100.0, 6100.0, 0.0, "none"),
        ("test", "a", 1, 1, 5.0, 6.0, 300.0, 900.0, 5.0, "none"),           # a test call: never a box
    ], columns=["split", "recording_id", "species_id", "songtype_id", "t_min", "t_max", "f_min", "f_max",
                "snr_db", "label"])
    (root / "truth").mkdir(parents=True, exist_ok=True)
    calls.to_csv(root / "truth" / "calls.csv", index=False)
    return calls


def annotated_boxes() -> pd.DataFrame:
    rows = [("r1", 0, 1, 1.02, 1000.0, 1.98, 2000.0, True), ("r3", 1, 1, 20.0, 100.0, 21.0, 400.0, True),
            ("r2", 2, 1, 5.0, 3000.0, 6.0, 4000.0, True),
            ("r2", 0, 1, 40.0, 1000.0, 41.0, 2000.0, False), ("r3", 1, 1, 3.0, 100.0, 4.0, 400.0, False)]
    frame = pd.DataFrame(rows, columns=["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max",
                                        "f_max", "is_tp"])
    frame["class_index"] = frame["species_id"].astype(np.int64)
    return frame


def hand_context(tmp_path: Path, folds=(1, 0, 1), overrides=()) -> StageContext:
    root = tmp_path / "data"
    write_calls(root)
    boxes = annotated_boxes()
    cfg = load_config(["stage=oracle", "preset=smoke", f"workspace={tmp_path / 'ws'}", *overrides])
    return StageContext(cfg=cfg, workspace=tmp_path / "ws", data_root=DataRoot(root),
                        scheme=ClassScheme(species=tuple(SPECIES)), boxes=boxes,
                        train=RecordingSet("train", tuple(TRAIN), BoxIndex.from_frame(boxes, TRAIN)),
                        test_ids=list(TEST), cache=None, fold_of_recording=np.asarray(folds), species=SPECIES,
                        prior=None, test_truth=None, train_truth=None, is_global_zero=True)


def test_truth_call_boxes_are_every_train_call(tmp_path):
    calls = write_calls(tmp_path)
    boxes = truth_call_boxes(tmp_path, TRAIN, ClassScheme(species=tuple(SPECIES)), 60.0)
    train = calls[calls.split == "train"]
    assert boxes["recording_id"].tolist() == train["recording_id"].tolist()
    assert boxes["class_index"].tolist() == train["species_id"].tolist()
    assert boxes["is_tp"].all()
    assert boxes["t_max"].max() == 60.0                      # clipped to the recording
    assert boxes["f_min"].tolist() == train["f_min"].tolist()


def test_truth_call_boxes_above_an_snr_floor_keep_the_annotated_calls(tmp_path):
    write_calls(tmp_path)
    scheme = ClassScheme(species=tuple(SPECIES))
    audible = truth_call_boxes(tmp_path, TRAIN, scheme, 60.0, min_snr_db=0.5)
    assert sorted(zip(audible.recording_id, audible.t_min)) == [("r1", 1.0), ("r2", 58.0)]   # 3 dB, 1 dB
    # a floor above every call keeps the annotated one (label tp, 3 dB): never fewer TPs than the bootstrap
    assert truth_call_boxes(tmp_path, TRAIN, scheme, 60.0, min_snr_db=10.0)[["recording_id", "t_min"]].values.tolist() \
        == [["r1", 1.0]]
    assert len(truth_call_boxes(tmp_path, TRAIN, scheme, 60.0, min_snr_db=-2.0)) == 4
    pd.read_csv(tmp_path / "truth" / "calls.csv").drop(columns="snr_db").to_csv(tmp_path / "truth" / "calls.csv")
    with pytest.raises(ValueError, match=r"calls\.csv: oracle.min_snr_db=0.5 needs the column 'snr_db'"):
        truth_call_boxes(tmp_path, TRAIN, scheme, 60.0, min_snr_db=0.5)


def test_truth_call_boxes_fail_naming_the_missing_truth(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"truth/calls\.csv.*does not exist"):
        truth_call_boxes(tmp_path, TRAIN, ClassScheme(species=tuple(SPECIES)), 60.0)
    write_calls(tmp_path)
    with pytest.raises(ValueError, match=r"calls\.csv.*not in the data root's train/"):
        truth_call_boxes(tmp_path, ["r1"], ClassScheme(species=tuple(SPECIES)), 60.0)


def test_oracle_trains_on_the_truth_calls_with_the_workspace_folds_and_the_bootstrap_bands(tmp_path):
    ctx = hand_context(tmp_path)
    stage = OracleStage(ctx)
    truth = truth_call_boxes(ctx.data_root.root, TRAIN, ctx.scheme, 60.0)
    assert stage.label_counts["min_snr_db"] is None and stage.label_counts["tp_boxes"] == 4
    floored = OracleStage(hand_context(tmp_path, overrides=["oracle.min_snr_db=0.5"]))
    assert floored.label_counts["min_snr_db"] == 0.5 and floored.label_counts["tp_boxes"] == 2
    index = stage.ctx.train.boxes
    tp = index.is_tp
    # the TP boxes the datamodule sees are exactly the truth calls; the annotated FP rows stay
    recording = np.asarray(index.recording_ids)[box_recordings(index)]
    got = sorted(zip(recording[tp], index.class_index[tp], index.t_min[tp]))
    assert got == sorted(zip(truth.recording_id, truth.class_index, truth.t_min))
    assert int((~tp).sum()) == 2 and not stage.ctx.boxes[~stage.ctx.boxes.is_tp].empty
    assert 1.02 not in index.t_min[tp]                       # the annotated TP row is gone
    # same recordings, same folds as every other run of the workspace
    assert stage.ctx.train.recording_ids == ctx.train.recording_ids
    assert stage.ctx.fold_of_recording.tolist() == [1, 0, 1]
    # the band detectors look at the annotated boxes' bands, not the truth calls'
    bands = stage.model_config({"detector": "band_crop"})["class_bands"]
    assert bands == class_bands_from_boxes(annotated_boxes(), 3)
    assert bands != class_bands_from_boxes(stage.ctx.boxes, 3)
    assert oracle_boxes(annotated_boxes(), truth)["is_tp"].sum() == len(truth)


def test_oracle_refuses_to_be_a_pipeline_round(tmp_path):
    with pytest.raises(ValueError, match="cannot be the pseudo-label round"):
        OracleStage(hand_context(tmp_path), name="round1_oracle")


def pool_names(workspace: Path) -> list[str]:
    return [e.name for e in PseudoLabelPool(workspace, writable=False).entries()]


def fake_fold_predictions(stage, n_frames: int = 6) -> None:
    """Per-fold oof/test npz files and 'done' folds in state.json, as run_fold leaves them."""
    rng = np.random.default_rng(0)
    for fold in (0, 1):
        held = [r for r, f in zip(TRAIN, stage.ctx.fold_of_recording) if f == fold]
        paths = {}
        for name, ids in (("oof", held), ("test", TEST)):
            frames = rng.uniform(size=(len(ids), 3, n_frames)).astype(np.float16)
            paths[name] = stage.state.relative(write_npz(stage.dir / f"fold{fold}" / f"{name}.npz",
                                                         recording_id=np.asarray(ids), framewise=frames,
                                                         clip=frames.max(-1).astype(np.float32)))
        stage.state.update_fold(stage.name, fold, status="done", **paths)


@pytest.mark.parametrize("stage_class, joins", [(OracleStage, False), (BootstrapStage, True)])
def test_the_oracle_does_not_join_the_pool_nor_write_the_workspace_submission(tmp_path, stage_class, joins):
    ctx = hand_context(tmp_path, folds=(1, 0, 0))
    stage = stage_class(ctx)
    fake_fold_predictions(stage)
    stage.finalize()
    assert (stage.dir / "submission.csv").is_file() and (stage.dir / "oof.csv").is_file()
    assert (stage.name in pool_names(tmp_path / "ws")) is joins
    assert (tmp_path / "ws" / "submission.csv").is_file() is joins
    state = RunState(tmp_path / "ws", writable=False)
    assert (stage.name in finished_stages(state)) is joins          # postprocess.sources never picks it
    assert state.stage(stage.name).get("joins_pool", True) is joins


# -- the report ----------------------------------------------------------------------------------------------
# truth: a = {s0}, b = {s1, s2}, c = {s2} (the train recordings r1..r3 the same)
TRUTH = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]])
# P1: a's s0 first (1), b's s2 first and s1 second (1, 2/2), c's s2 second (1/2): (1 + 1 + 1 + 0.5) / 4
P1 = [[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.1, 0.6]]
# P2: a's s0 third (1/3), b as P1 (1, 1), c's s2 first (1): (1/3 + 3) / 4
P2 = [[0.1, 0.9, 0.5], [0.2, 0.3, 0.8], [0.1, 0.2, 0.9]]
P3 = [[0.9, 0.1, 0.1], [0.1, 0.8, 0.9], [0.1, 0.1, 0.9]]                # perfect: 1
# the prior ranks s0 > s2 > s1 everywhere: a 1; b: s2 second (1/2), s1 third (2/3); c 1/2
PRIOR = np.array([0.5, 0.2, 0.3])
L1, L2, L3, LPRIOR = 3.5 / 4, (1 / 3 + 3) / 4, 1.0, (1 + 0.5 + 2 / 3 + 0.5) / 4


def table(ids, scores, fold=False) -> pd.DataFrame:
    frame = pd.DataFrame(scores, columns=COLS)
    if fold:
        frame.insert(0, "fold", [0, 1, 0])
    frame.insert(0, "recording_id", ids)
    return frame


def write_run(ws: Path, folder: str, sub, raw=None, oof=None) -> dict:
    (ws / folder).mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, scores, ids in (("submission.csv", sub, TEST), ("submission_raw.csv", raw, TEST),
                              ("oof.csv", oof, TRAIN)):
        if scores is not None:
            table(ids, scores, fold=name == "oof.csv").to_csv(ws / folder / name, index=False)
            outputs[name] = f"{folder}/{name}"
    return outputs


def tiny_workspace(ws: Path) -> None:
    def stage(kind, outputs, wall=None, **extra):
        entry = {"folds": {"0": {"status": "done"}}, "outputs": outputs, "metrics": {},
                 "config": {"stage": {"name": kind}, "score": {"odds_to_prior": kind != "template"}}, **extra}
        if wall is not None:
            entry["wall_seconds"] = wall
        return entry

    stages = {  # state.json order is not report order
        "round1_coteach": stage("coteach", write_run(ws, "round1_coteach", P1, P1, P1), wall=19.0),
        "round0_template": stage("template", write_run(ws, "round0_template", P2, P1, P1), wall=5.0),
        "bootstrap": stage("bootstrap", write_run(ws, "bootstrap", P1, P2, P2), wall=10.0),
        "oracle": stage("oracle", write_run(ws, "oracle", P3, P3, P3), wall=30.0, joins_pool=False,
                        labels={"tp_boxes": 9, "annotated_tp_boxes": 3, "fp_boxes": 2}),
        "postprocess": {"folds": {}, "outputs": write_run(ws, "postprocess", P2, P2), "metrics": {},
                        "config": {"sources": "latest"}},
        "round2_coteach": {"folds": {"0": {"status": "pending"}}, "outputs": {}, "metrics": {},
                           "config": {"stage": {"name": "coteach"}}},
    }
    write_run(ws, "ensemble1", P2, P2, P2)
    rounds = {"round0_template": {"index": 0, "kind": "template", "status": "done", "wall_seconds": 5.0},
              "round1_coteach": {"index": 1, "kind": "coteach", "status": "done", "wall_seconds": 20.0,
                                 "ensemble": {"name": "ensemble1", "members": ["round0_template", "round1_coteach"],
                                              "lb": 0.9}},
              "round2_coteach": {"index": 2, "kind": "coteach", "status": "running", "wall_seconds": 0.0}}
    (ws / "state.json").write_text(json.dumps({"version": 1, "stages": stages,
                                               "pipeline": {"id": "x", "rounds": rounds}}))


def truth_frame(ids) -> pd.DataFrame:
    return table(ids, TRUTH)


def test_report_lists_every_run_in_pipeline_order_with_hand_computed_lwlrap(tmp_path):
    ws = tmp_path / "ws"
    tiny_workspace(ws)
    report = build_report(ws, {"test": TEST, "train": TRAIN}, {"test": truth_frame(TEST), "oof": truth_frame(TRAIN)},
                          SPECIES, PRIOR, {"test": Path("t.csv"), "train": Path("r.csv")})
    assert report["run"].tolist() == ["prior", "bootstrap", "round0_template", "round1_coteach", "ensemble1",
                                      "oracle", "postprocess"]
    assert report["kind"].tolist() == ["prior", "bootstrap", "template", "coteach", "ensemble", "oracle", "postprocess"]
    # a K-fold run's OOF on the submission's scale: its raw oof.csv odds-scaled toward the prior, as the stage
    # scored it (the test fixture's template run has score.odds_to_prior off, so its OOF stays as written);
    # P2 scaled ranks b's s1 below s2 and c's s2 first: another score than raw P2's
    L2_SCALED = lwlrap(odds_scale_to_prior(np.asarray(P2, float), PRIOR), TRUTH > 0)
    L1_SCALED = lwlrap(odds_scale_to_prior(np.asarray(P1, float), PRIOR), TRUTH > 0)
    assert abs(L2_SCALED - L2) > 0.01
    expected = {  # run: (test, test raw, OOF, OOF raw)
        "prior": (LPRIOR, np.nan, LPRIOR, np.nan), "bootstrap": (L1, L2, L2_SCALED, L2),
        "round0_template": (L2, L1, L1, L1), "round1_coteach": (L1, L1, L1_SCALED, L1),
        "ensemble1": (L2, L2, L2, np.nan), "oracle": (L3, L3, L3, L3), "postprocess": (L2, L2, np.nan, np.nan)}
    got = report.set_index("run")
    for run, values in expected.items():
        np.testing.assert_allclose(got.loc[run, ["test_lwlrap", "test_raw_lwlrap", "oof_lwlrap", "oof_raw_lwlrap"]]
                                   .to_numpy(float), values, atol=1e-9, err_msg=run)
    np.testing.assert_allclose(got["test_gap_to_oracle"], 1.0 - got["test_lwlrap"])
    assert got.loc["bootstrap", "oof_gap_to_oracle"] == pytest.approx(1.0 - L2_SCALED)
    # wall time: the pipeline's record for its rounds, state.json's own for the others; none for the ensemble
    assert got.loc["round1_coteach", "wall_seconds"] == 20.0 and got.loc["bootstrap", "wall_seconds"] == 10.0
    assert np.isnan(got.loc["ensemble1", "wall_seconds"])
    assert "no oof.csv" in got.loc["postprocess", "note"]

    md = (ws / "report.md").read_text()
    positions = [md.index(f"| {run} |") for run in report["run"]]
    assert positions == sorted(positions)
    assert "`round2_coteach` has not finished" in md and "9 true calls" in md
    assert "| bootstrap | bootstrap | 0.875 | 0.833 | 0.667 | 0.833 | 10 s | +0.125 | +0.333 |" in md
    assert (ws / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = pd.read_csv(ws / "report.csv")
    np.testing.assert_allclose(written["test_lwlrap"], report["test_lwlrap"], atol=1e-6)
    assert not list(ws.glob(".*.tmp"))                            # atomic writes leave nothing behind
    state = json.loads((ws / "state.json").read_text())
    assert "report" not in state["stages"]                         # the report never writes state.json


def test_report_without_labels_lists_the_runs_unscored_and_says_so(tmp_path):
    ws = tmp_path / "ws"
    tiny_workspace(ws)
    report = build_report(ws, {"test": TEST, "train": TRAIN}, {"test": None, "oof": None}, SPECIES, PRIOR, {})
    assert len(report) == 7 and report["test_lwlrap"].isna().all() and report["oof_lwlrap"].isna().all()
    assert "No clip labels are known" in (ws / "report.md").read_text()
    assert (ws / "report.png").is_file()


def test_report_rejects_a_run_scored_on_other_clips(tmp_path):
    ws = tmp_path / "ws"
    tiny_workspace(ws)
    table(["a", "b", "zz"], P1).to_csv(ws / "bootstrap" / "submission.csv", index=False)
    with pytest.raises(ValueError, match=r"bootstrap/submission\.csv: holds other recordings"):
        build_report(ws, {"test": TEST, "train": TRAIN}, {"test": truth_frame(TEST), "oof": None}, SPECIES, PRIOR, {})


def test_report_without_a_workspace_fails_before_creating_anything(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=r"nothing/state\.json does not exist"):
        main(["stage=report", "preset=smoke", f"workspace={missing}"])
    assert not missing.exists()                                    # no workspace, no generated data
    missing.mkdir()
    (missing / "state.json").write_text(json.dumps({"version": 1, "stages": {}}))
    assert [r.name for r in collect_runs(RunState(missing))[0]] == ["prior"]
    with pytest.raises(FileNotFoundError, match="no finished run"):
        build_report(missing, {"test": TEST, "train": TRAIN}, {}, SPECIES, None, {})


# -- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bootstrap_oracle_report_through_the_cli(tmp_path, smoke_data_root):
    ws = tmp_path / "ws"
    fast = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "predict.mode=whole"]
    assert main(smoke_args(ws, smoke_data_root, *fast)) == 0
    bootstrap_submission = (ws / "submission.csv").read_bytes()
    assert main(smoke_args(ws, smoke_data_root, "stage=oracle", *fast)) == 0
    assert main(smoke_args(ws, smoke_data_root, "stage=report")) == 0

    state = json.loads((ws / "state.json").read_text())
    oracle = state["stages"]["oracle"]
    calls = pd.read_csv(smoke_data_root / "truth" / "calls.csv")
    assert oracle["labels"]["tp_boxes"] == int((calls.split == "train").sum())
    assert oracle["labels"]["tp_boxes"] > oracle["labels"]["annotated_tp_boxes"]
    assert oracle["joins_pool"] is False
    assert pool_names(ws) == ["bootstrap"]
    assert (ws / "submission.csv").read_bytes() == bootstrap_submission      # the oracle never becomes W's
    folds = pd.read_csv(ws / "folds.csv", dtype={"recording_id": str}).set_index("recording_id")["fold"]
    for run in ("bootstrap", "oracle"):
        oof = pd.read_csv(ws / run / "oof.csv", dtype={"recording_id": str})
        assert oof["fold"].tolist() == folds.loc[oof["recording_id"]].tolist(), run

    report = pd.read_csv(ws / "report.csv")
    assert report["run"].tolist() == ["prior", "bootstrap", "oracle"]
    for run in ("bootstrap", "oracle"):   # the report's scores of the files are the stage's own metrics
        row, metrics = report.set_index("run").loc[run], state["stages"][run]["metrics"]
        assert row["test_lwlrap"] == pytest.approx(metrics["test_lwlrap"], abs=1e-4)
        assert row["test_raw_lwlrap"] == pytest.approx(metrics["test_raw_lwlrap"], abs=1e-4)
        assert row["oof_lwlrap"] == pytest.approx(metrics["oof_lwlrap"], abs=1e-4)         # odds-scaled
        assert row["oof_raw_lwlrap"] == pytest.approx(metrics["oof_raw_lwlrap"], abs=1e-4)
    assert report.set_index("run").loc["prior", "test_lwlrap"] == pytest.approx(
        state["stages"]["bootstrap"]["metrics"]["test_prior_lwlrap"])
    assert (ws / "report.md").is_file() and (ws / "report.png").is_file()

    # data without a hidden truth: the oracle names the file it needs
    plain = tmp_path / "plain"
    shutil.copytree(smoke_data_root, plain, ignore=shutil.ignore_patterns("truth"))
    with pytest.raises(FileNotFoundError, match=r"plain/truth/calls\.csv"):
        main(["stage=oracle", "preset=smoke", "data=rfcx", f"data.root={plain}", f"workspace={tmp_path / 'ws2'}",
              f"audio.cache_dir={smoke_data_root.parent / 'cache'}"])
