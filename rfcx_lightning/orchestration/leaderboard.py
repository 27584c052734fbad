"""Leaderboard hooks: the score that decides whether a pseudo-label round helped. Chosen by ``lb=``.

* ``holdout``: LWLRAP of a round's ``submission.csv`` against a clip-label CSV in sample_submission format
  (``lb.labels=PATH``; by default ``data.labels``, or the hidden truth of the embedded synthetic data);
  the labels may cover only part of the submitted recordings (like Kaggle's public leaderboard).
* ``kaggle``: submit the round's ``submission.csv`` with the ``kaggle`` CLI and poll its public score.
  Each round's submission carries a message unique to the workspace and round; a rerun after a kill first
  looks for that message among the existing submissions, so a round is never submitted twice.
* ``none``: no score; the pipeline runs a fixed number of rounds and keeps the last one.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ..metrics import lwlrap

log = logging.getLogger(__name__)


class Leaderboard(ABC):
    """Scores one round's submission; higher is better; ``None`` when the hook gives no score."""

    kind: str = "leaderboard"

    @abstractmethod
    def score(self, submission: Path, tag: str) -> float | None:
        """Score ``submission``; ``tag`` names the round uniquely within the workspace (e.g. for a message)."""


class NoLeaderboard(Leaderboard):
    kind = "none"

    def score(self, submission: Path, tag: str) -> float | None:
        return None


def read_score_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV with ``recording_id`` and ``s<k>`` columns, every score numeric; errors name file, row, column."""
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    frame = pd.read_csv(path, dtype={"recording_id": str}, keep_default_na=False)
    if "recording_id" not in frame.columns:
        raise ValueError(f"{what} {path}: no recording_id column (columns: {list(frame.columns)[:6]}...)")
    columns = [c for c in frame.columns if c != "recording_id"]
    if not columns:
        raise ValueError(f"{what} {path}: no class columns s0, s1, ...")
    duplicated = frame.recording_id[frame.recording_id.duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{what} {path}: recording_id repeated: {duplicated[:3]}")
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            row = int(bad[0])
            raise ValueError(f"{what} {path}, line {row + 2} (recording_id {frame.recording_id.iloc[row]}), "
                             f"column {column}: {frame[column].iloc[row]!r} is not a number")
        frame[column] = values
    return frame


class HoldoutLeaderboard(Leaderboard):
    """LWLRAP against clip labels that the models never saw (a holdout, or the synthetic hidden truth).

    The labels may cover only part of the submission, like Kaggle's public leaderboard, which scores a
    subset of the submitted recordings: the score is the LWLRAP over the labelled recordings only, and
    ``score`` prints how many of the submitted recordings that was, so a score on 30 clips is not
    mistaken for one on 600. Two cases stay errors, naming the label file, because they mean the labels
    and the submission do not belong together: no submitted recording is labelled, or a labelled
    recording is absent from the submission (a submission that skips recordings would be rejected by
    Kaggle, and scoring only the rest would flatter it).
    """

    kind = "holdout"

    def __init__(self, labels: str | Path):
        self.labels = Path(labels).expanduser()
        self.last_counts: tuple[int, int] | None = None     # (scored, submitted) of the latest score()

    def score(self, submission: Path, tag: str) -> float:
        predicted = read_score_table(submission, "submission")
        truth = read_score_table(self.labels, "lb.labels").set_index("recording_id")
        columns = [c for c in predicted.columns if c != "recording_id"]
        missing_cols = [c for c in columns if c not in truth.columns]
        if missing_cols:
            raise ValueError(f"lb.labels {self.labels}: no column for {missing_cols[:5]} of the submission")
        scored = predicted[predicted.recording_id.isin(truth.index)]
        if scored.empty:
            raise ValueError(f"lb.labels {self.labels}: none of the {len(predicted)} recordings of the "
                             f"submission {submission} is labelled (e.g. {predicted.recording_id.tolist()[:3]}); "
                             "are these the labels of this test set?")
        submitted = set(predicted.recording_id)
        absent = [rid for rid in truth.index if rid not in submitted]
        if absent:
            raise ValueError(f"lb.labels {self.labels}: {len(absent)} labelled recordings are not in the "
                             f"submission {submission}, e.g. {absent[:3]}")
        self.last_counts = (len(scored), len(predicted))
        print(f"lb=holdout: scored {len(scored)} of {len(predicted)} submitted recordings (labels: {self.labels})",
              flush=True)
        y = truth.loc[scored.recording_id, columns].to_numpy() > 0
        if not y.any():
            raise ValueError(f"lb.labels {self.labels}: the {len(scored)} labelled recordings of {submission} "
                             "have no species present, so LWLRAP is undefined")
        return float(lwlrap(scored[columns].to_numpy(dtype=np.float64), y))


class KaggleLeaderboard(Leaderboard):
    """``kaggle competitions submit`` then ``kaggle competitions submissions -v`` until the score is public.

    The CLI (``pip install kaggle``, credentials in ``~/.kaggle/kaggle.json``) is run as a subprocess; its
    CSV listing (``fileName,date,description,status,publicScore,...``) is parsed by header, so column
    order does not matter.
    """

    kind = "kaggle"

    def __init__(self, competition: str, executable: str = "kaggle", poll_seconds: float = 30.0,
                 timeout_seconds: float = 3600.0, message_prefix: str = "rfcx_lightning"):
        self.competition = competition
        self.executable = executable
        self.poll_seconds = float(poll_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self.message_prefix = message_prefix

    def _cli(self, *args: str) -> str:
        exe = shutil.which(self.executable)
        if exe is None:
            raise FileNotFoundError(f"lb=kaggle: the {self.executable!r} CLI is not on PATH "
                                    "(pip install kaggle; credentials in ~/.kaggle/kaggle.json)")
        result = subprocess.run([exe, "competitions", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"lb=kaggle: `kaggle competitions {' '.join(args)}` failed with exit code "
                               f"{result.returncode}: {(result.stderr or result.stdout).strip()[-500:]}")
        return result.stdout

    def submissions(self) -> list[dict[str, str]]:
        """The competition's submissions, newest first, as the CLI lists them."""
        text = self._cli("submissions", "-c", self.competition, "-v")
        start = text.find("fileName")
        if start < 0:
            if not text.strip() or "No submissions" in text:
                return []
            raise ValueError(f"lb=kaggle: cannot read the submissions listing (no fileName header): {text[:300]!r}")
        rows = list(csv.DictReader(io.StringIO(text[start:])))
        for number, row in enumerate(rows, start=2):
            for field in ("description", "status", "publicScore"):
                if field not in row or row[field] is None:
                    raise ValueError(f"lb=kaggle: submissions listing line {number} has no {field!r} field")
        return rows

    def message(self, tag: str) -> str:
        return f"{self.message_prefix} {tag}"

    def score(self, submission: Path, tag: str) -> float:
        message = self.message(tag)
        if not any(row["description"] == message for row in self.submissions()):
            self._cli("submit", "-c", self.competition, "-f", str(submission), "-m", message)
            log.info("lb=kaggle: submitted %s as %r", submission, message)
        else:
            log.info("lb=kaggle: %r was submitted by an earlier run; polling its score", message)
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            row = next((r for r in self.submissions() if r["description"] == message), None)
            if row is None:
                raise RuntimeError(f"lb=kaggle: the submission {message!r} is not in the listing after submit")
            status = row["status"].lower()
            if "error" in status:
                raise RuntimeError(f"lb=kaggle: the submission {message!r} failed: status {row['status']!r}")
            if "complete" in status and row["publicScore"].strip() not in ("", "None"):
                try:
                    return float(row["publicScore"])
                except ValueError:
                    raise ValueError(f"lb=kaggle: submission {message!r}: publicScore "
                                     f"{row['publicScore']!r} is not a number") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"lb=kaggle: no public score for {message!r} after "
                                   f"{self.timeout_seconds:.0f} s (status {row['status']!r})")
            time.sleep(self.poll_seconds)


def default_holdout_labels(data: DictConfig) -> Path:
    """``data.labels`` if set, else the synthetic data's hidden truth; otherwise ask for ``lb.labels``."""
    if data.get("labels"):
        return Path(str(data.labels))
    if data.get("kind") == "synthetic":
        return Path(str(data.root)).expanduser().resolve() / "truth" / "test_labels.csv"
    raise ValueError("lb=holdout needs clip labels of the test recordings: set lb.labels=PATH "
                     "(sample_submission format, 1 where a species is present)")


def build_leaderboard(lb: DictConfig, data: DictConfig) -> Leaderboard:
    kind = lb.get("kind")
    if kind == "none":
        return NoLeaderboard()
    if kind == "holdout":
        return HoldoutLeaderboard(lb.get("labels") or default_holdout_labels(data))
    if kind == "kaggle":
        return KaggleLeaderboard(competition=str(lb.competition), executable=str(lb.executable),
                                 poll_seconds=float(lb.poll_seconds), timeout_seconds=float(lb.timeout_seconds),
                                 message_prefix=str(lb.message_prefix))
    raise ValueError(f"lb={kind!r}: choose holdout, kaggle or none")
