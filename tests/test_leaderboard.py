"""Leaderboard hooks: holdout LWLRAP, the kaggle CLI (a fake ``kaggle`` executable on PATH), none."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rfcx_lightning.metrics import lwlrap
from rfcx_lightning.orchestration.leaderboard import (HoldoutLeaderboard, KaggleLeaderboard, NoLeaderboard,
                                                      build_leaderboard)
from rfcx_lightning.run import load_config

IDS = ["a01", "a02", "a03", "007"]
COLUMNS = [f"s{k}" for k in range(4)]

# The fake CLI keeps its state in a JSON file beside it: the scripted public scores (one per submission,
# in order), the submissions made, and every call. A new submission is "pending" the first time it is
# listed and "complete" with its score afterwards, so the hook has to poll.
FAKE_KAGGLE = r'''#!{python}
import json, sys
from pathlib import Path
state_path = Path(__file__).with_name("kaggle_state.json")
state = json.loads(state_path.read_text())
args = sys.argv[1:]
state["calls"].append(args)
def opt(flag):
    return args[args.index(flag) + 1]
if args[:2] == ["competitions", "submit"]:
    n = len(state["submissions"])
    state["submissions"].append({{"fileName": Path(opt("-f")).name, "description": opt("-m"),
                                  "score": state["scores"][n], "listed": 0,
                                  "content": Path(opt("-f")).read_text()}})
    print("Successfully submitted to " + opt("-c"))
elif args[:2] == ["competitions", "submissions"]:
    print("Using competition: " + opt("-c"))
    print("fileName,date,description,status,publicScore,privateScore")
    for s in reversed(state["submissions"]):
        done = s["listed"] > 0
        s["listed"] += 1
        status = state.get("status", "complete") if done else "pending"
        score = str(s["score"]) if done else ""
        print(f'{{s["fileName"]}},2021-02-17 10:00:00,"{{s["description"]}}",{{status}},{{score}},')
else:
    print("unknown command " + " ".join(args), file=sys.stderr)
    sys.exit(2)
state_path.write_text(json.dumps(state))
'''


def install_fake_kaggle(folder: Path, scores: list[float], monkeypatch=None, status: str = "complete") -> Path:
    """Write the fake ``kaggle`` into ``folder``, put it first on PATH; returns its state file."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "kaggle"
    exe.write_text(FAKE_KAGGLE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    state = folder / "kaggle_state.json"
    state.write_text(json.dumps({"scores": scores, "submissions": [], "calls": [], "status": status}))
    if monkeypatch is not None:
        monkeypatch.setenv("PATH", str(folder) + os.pathsep + os.environ["PATH"])
    return state


def write_table(path: Path, values: np.ndarray, ids=IDS) -> Path:
    frame = pd.DataFrame(values, columns=COLUMNS)
    frame.insert(0, "recording_id", ids)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def truth_csv(tmp_path) -> Path:
    truth = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]])
    return write_table(tmp_path / "labels.csv", truth)


def test_holdout_is_lwlrap_against_the_label_csv(tmp_path, truth_csv):
    rng = np.random.default_rng(0)
    scores = rng.random((4, 4))
    submission = write_table(tmp_path / "submission.csv", scores)
    truth = pd.read_csv(truth_csv, dtype={"recording_id": str})[COLUMNS].to_numpy() > 0
    board = HoldoutLeaderboard(truth_csv)
    assert board.score(submission, "r0") == pytest.approx(lwlrap(scores, truth))
    perfect = write_table(tmp_path / "perfect.csv", truth.astype(float))
    assert board.score(perfect, "r1") == pytest.approx(1.0)
    # row order of the submission does not matter; "007" keeps its zeros
    shuffled = write_table(tmp_path / "shuffled.csv", scores[::-1], ids=IDS[::-1])
    assert board.score(shuffled, "r2") == pytest.approx(lwlrap(scores, truth))


def test_holdout_bad_input_names_file_row_and_field(tmp_path, truth_csv):
    bad = write_table(tmp_path / "submission.csv", np.ones((4, 4)))
    text = bad.read_text().splitlines()
    text[3] = text[3].replace("1.0", "oops", 1)
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"submission.csv, line 4 \(recording_id a03\), column s0: 'oops'"):
        HoldoutLeaderboard(truth_csv).score(bad, "r0")
    stranger = write_table(tmp_path / "stranger.csv", np.ones((4, 4)), ids=["a01", "a02", "a03", "zzz"])
    with pytest.raises(ValueError, match=r"labels.csv: 1 labelled recordings are not in the submission "
                                         r".*stranger.csv, e.g. \['007'\]"):
        HoldoutLeaderboard(truth_csv).score(stranger, "r0")
    with pytest.raises(FileNotFoundError, match="lb.labels .*nowhere.csv does not exist"):
        HoldoutLeaderboard(tmp_path / "nowhere.csv").score(stranger, "r0")


def test_holdout_on_half_the_submission_scores_the_labelled_half(tmp_path, truth_csv, capsys):
    # Kaggle's public LB scores a subset of the submitted recordings: 4 labelled of 8 submitted
    rng = np.random.default_rng(1)
    scores = rng.random((8, 4))
    ids = ["b01", "a01", "b02", "a02", "a03", "b03", "007", "b04"]     # labelled ones interleaved
    submission = write_table(tmp_path / "submission.csv", scores, ids=ids)
    truth = pd.read_csv(truth_csv, dtype={"recording_id": str}).set_index("recording_id")
    labelled = [i for i, rid in enumerate(ids) if rid in truth.index]
    expected = lwlrap(scores[labelled], truth.loc[[ids[i] for i in labelled], COLUMNS].to_numpy() > 0)
    board = HoldoutLeaderboard(truth_csv)
    assert board.score(submission, "r0") == pytest.approx(expected)
    assert board.last_counts == (4, 8)
    assert f"lb=holdout: scored 4 of 8 submitted recordings (labels: {truth_csv})" in capsys.readouterr().out
    # the unlabelled half does not move the score, whatever it holds
    scrambled = scores.copy()
    scrambled[[i for i in range(8) if i not in labelled]] = rng.random((4, 4)) * 10
    assert board.score(write_table(tmp_path / "scrambled.csv", scrambled, ids=ids), "r1") == pytest.approx(expected)
    # and it is not the score of the whole submission against anything: a perfect labelled half scores 1.0
    perfect = scores.copy()
    perfect[labelled] = truth.loc[[ids[i] for i in labelled], COLUMNS].to_numpy(dtype=float)
    assert board.score(write_table(tmp_path / "perfect.csv", perfect, ids=ids), "r2") == pytest.approx(1.0)


def test_holdout_without_overlap_or_with_a_missing_labelled_recording_fails_naming_the_file(tmp_path, truth_csv):
    board = HoldoutLeaderboard(truth_csv)
    disjoint = write_table(tmp_path / "disjoint.csv", np.ones((4, 4)), ids=["x1", "x2", "x3", "x4"])
    with pytest.raises(ValueError, match=r"lb.labels .*labels.csv: none of the 4 recordings of the submission "
                                         r".*disjoint.csv is labelled"):
        board.score(disjoint, "r0")
    # a labelled recording the submission lacks: named, with the label file
    three = write_table(tmp_path / "three.csv", np.ones((3, 4)), ids=["a01", "a02", "a03"])
    with pytest.raises(ValueError, match=r"lb.labels .*labels.csv: 1 labelled recordings are not in the "
                                         r"submission .*three.csv, e.g. \['007'\]"):
        board.score(three, "r0")


def test_kaggle_submits_once_and_polls_the_public_score(tmp_path, monkeypatch):
    state_file = install_fake_kaggle(tmp_path / "bin", [0.812, 0.799], monkeypatch)
    submission = write_table(tmp_path / "submission.csv", np.ones((4, 4)))
    board = KaggleLeaderboard("rfcx-species-audio-detection", poll_seconds=0, timeout_seconds=30)
    assert board.score(submission, "abc:round0_bootstrap") == pytest.approx(0.812)
    state = json.loads(state_file.read_text())
    submits = [c for c in state["calls"] if c[:2] == ["competitions", "submit"]]
    assert submits == [["competitions", "submit", "-c", "rfcx-species-audio-detection", "-f", str(submission),
                        "-m", "rfcx_lightning abc:round0_bootstrap"]]
    assert state["submissions"][0]["content"] == submission.read_text()
    assert len(state["calls"]) >= 3          # listing before submit, a pending listing, the complete one

    # a rerun of the same round (killed after submitting) polls the existing submission, never resubmits
    assert board.score(submission, "abc:round0_bootstrap") == pytest.approx(0.812)
    # the next round is a new submission with the next scripted score
    assert board.score(submission, "abc:round1_coteach") == pytest.approx(0.799)
    state = json.loads(state_file.read_text())
    assert [s["description"] for s in state["submissions"]] == ["rfcx_lightning abc:round0_bootstrap",
                                                                 "rfcx_lightning abc:round1_coteach"]


def test_kaggle_errors_are_clear(tmp_path, monkeypatch):
    submission = write_table(tmp_path / "submission.csv", np.ones((4, 4)))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="'kaggle' CLI is not on PATH"):
        KaggleLeaderboard("c", poll_seconds=0).score(submission, "t")
    install_fake_kaggle(tmp_path / "bin", [0.5], monkeypatch, status="error")
    with pytest.raises(RuntimeError, match="rfcx_lightning t' failed: status 'error'"):
        KaggleLeaderboard("c", poll_seconds=0).score(submission, "t")


def test_kaggle_gives_up_after_the_timeout(tmp_path, monkeypatch):
    install_fake_kaggle(tmp_path / "bin", [0.5], monkeypatch, status="pending")
    submission = write_table(tmp_path / "submission.csv", np.ones((4, 4)))
    with pytest.raises(TimeoutError, match="no public score"):
        KaggleLeaderboard("c", poll_seconds=0, timeout_seconds=0).score(submission, "t")


def test_hooks_are_chosen_by_lb(tmp_path):
    holdout = build_leaderboard(*_lb_and_data(["lb=holdout", f"workspace={tmp_path}"]))
    assert isinstance(holdout, HoldoutLeaderboard)
    assert holdout.labels == tmp_path.resolve() / "data" / "truth" / "test_labels.csv"   # synthetic truth
    explicit = build_leaderboard(*_lb_and_data(["lb=holdout", "lb.labels=/x/labels.csv", "data=rfcx",
                                                "data.root=/x"]))
    assert explicit.labels == Path("/x/labels.csv")
    with pytest.raises(ValueError, match="lb=holdout needs .*lb.labels=PATH"):
        build_leaderboard(*_lb_and_data(["lb=holdout", "data=rfcx", "data.root=/x"]))
    kaggle = build_leaderboard(*_lb_and_data(["lb=kaggle", "lb.poll_seconds=5"]))
    assert isinstance(kaggle, KaggleLeaderboard) and kaggle.poll_seconds == 5
    assert kaggle.competition == "rfcx-species-audio-detection"
    none = build_leaderboard(*_lb_and_data(["lb=none"]))
    assert isinstance(none, NoLeaderboard) and none.score(tmp_path / "whatever.csv", "t") is None


def _lb_and_data(overrides):
    cfg = load_config(["stage=pipeline", *overrides])
    return cfg.lb, cfg.data
