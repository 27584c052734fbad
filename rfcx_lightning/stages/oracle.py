"""Stage ``oracle``: the bootstrap trained with every true call as a TP box: the ceiling of label efficiency.

The pseudo-label rounds try to recover the calls nobody annotated. On the synthetic data the hidden truth
(``truth/calls.csv``) lists every call, so the best those rounds could ever do with this model is known: the
same bootstrap, trained with *all* true calls of the train recordings as TP boxes (the FP rows of
``train_fp.csv`` unchanged). Everything else is the bootstrap's: model, preset, weak negatives,
post-processing, and, above all, the workspace's folds (``W/folds.csv``, made from the annotated boxes;
recomputing them from the oracle's boxes would give other folds, and OOF scores on other folds are not
comparable). The band detectors also keep the bootstrap's class bands (the median band of the annotated
boxes), so the network sees the same input and only the labels differ.

The oracle saw the truth, so it must never teach: it does not join the pseudo-label pool, does not write the
workspace's ``W/submission.csv``, and is flagged in ``state.json`` (``KFoldStage.joins_pool``). It cannot be
a pipeline round either. Its outputs are those of any K-fold stage, in ``W/oracle/``; ``stage=report``
shows every run's gap to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.annotations import ANNOTATION_COLUMNS, ClassScheme
from ..settings import from_block
from .bootstrap import BootstrapStage
from .context import StageContext, with_train_boxes

#: columns of ``truth/calls.csv`` the oracle needs
CALL_COLUMNS = ("split", "recording_id", "species_id", "songtype_id", "t_min", "t_max", "f_min", "f_max")


def calls_path(data_root: Path) -> Path:
    return Path(data_root) / "truth" / "calls.csv"


def truth_call_boxes(data_root: Path, train_ids: list[str], scheme: ClassScheme,
                     duration_s: float, min_snr_db: float | None = None) -> pd.DataFrame:
    """Every true call of the train recordings as a TP box, in the columns of ``load_boxes``.

    ``min_snr_db`` (``oracle.min_snr_db``) keeps only the calls at least this loud in their band (the
    truth's ``snr_db``), plus every annotated call (``label == "tp"``), so the oracle never has fewer TP boxes
    than the bootstrap. Why: at the realistic level about half the calls are below 0 dB; labelling inaudible
    calls as TP teaches the network noise, and that oracle scored below the template (docs/results.md). The
    calls left out are neither TP nor FP: unknown, as every unannotated cell is.

    Read with :func:`rfcx_lightning.data.synthetic.load_calls`. Errors name the file: a data root without a
    hidden truth (real RFCx data, Raven tables) has no ``truth/calls.csv``, and a call of a recording that is
    not in ``train/`` or of a class the scheme lacks means the truth belongs to other data.
    """
    from ..data.synthetic import load_calls

    path = calls_path(data_root)
    if not path.is_file():
        raise FileNotFoundError(
            f"stage=oracle trains on every true call, read from {path}, which does not exist: only data with a "
            "hidden truth (data=synthetic, the embedded soundscapes) has one; real RFCx or Raven data cannot "
            "have an oracle")
    calls = load_calls(data_root)
    missing = [c for c in CALL_COLUMNS if c not in calls.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(calls.columns)}")
    calls = calls[calls["split"] == "train"].copy()
    if min_snr_db is not None:
        for column in ("snr_db", "label"):
            if column not in calls.columns:
                raise ValueError(f"{path}: oracle.min_snr_db={min_snr_db} needs the column {column!r}; "
                                 f"found {list(calls.columns)}")
        calls = calls[(calls["snr_db"].astype(float) >= float(min_snr_db)) | (calls["label"] == "tp")]
    known = set(map(str, train_ids))
    unknown = sorted(set(calls["recording_id"]) - known)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} train recording(s) with calls are not in the data root's train/, "
                         f"e.g. {unknown[:3]}; is this the truth of another data set?")
    calls["t_min"] = np.clip(calls["t_min"].astype(float), 0.0, duration_s)
    calls["t_max"] = np.clip(calls["t_max"].astype(float), 0.0, duration_s)
    empty = calls["t_max"] <= calls["t_min"]
    if empty.any():
        line = int(np.flatnonzero(empty.to_numpy())[0])
        raise ValueError(f"{path}: call {calls.iloc[line][['recording_id', 't_min', 't_max']].tolist()} has no "
                         f"duration inside the {duration_s} s recording")
    boxes = calls[list(ANNOTATION_COLUMNS)].reset_index(drop=True)
    boxes["recording_id"] = boxes["recording_id"].astype(str)
    boxes["species_id"] = boxes["species_id"].astype(np.int64)
    boxes["songtype_id"] = boxes["songtype_id"].astype(np.int64)
    boxes["is_tp"] = True
    try:
        boxes["class_index"] = scheme.class_indices(boxes["species_id"], boxes["songtype_id"])
    except KeyError as err:
        raise ValueError(f"{path}: a call has a class the annotated boxes define no class for ({err.args[0]}); "
                         "with data.by_songtype=true every (species, songtype) must have a TP or FP box") from None
    return boxes


def oracle_boxes(annotated: pd.DataFrame, truth_tp: pd.DataFrame) -> pd.DataFrame:
    """The oracle's training boxes: the truth's TP boxes replace the annotated TP rows, FP rows stay.

    TP rows first, then FP rows, as ``load_boxes`` orders them (where a TP and an FP box overlap, TP wins,
    as always).
    """
    fp = annotated[~annotated["is_tp"].astype(bool)]
    return pd.concat([truth_tp, fp[truth_tp.columns]], ignore_index=True)


@dataclass
class OracleSettings:
    """The ``oracle:`` block (stages/stage/oracle.yaml)."""

    min_snr_db: float | None


class OracleStage(BootstrapStage):
    """The bootstrap on :func:`oracle_boxes`, same folds and bands; a reference that never teaches."""

    kind = "oracle"
    joins_pool = False

    def __init__(self, ctx: StageContext, name: str | None = None):
        from ..workspace import parse_round_name

        if name is not None and parse_round_name(name) is not None:
            raise ValueError(f"stage=oracle cannot be the pseudo-label round {name!r}: it trains on the hidden "
                             "truth, so it must not teach later rounds or become the pipeline's submission; "
                             "run it alone (python -m rfcx_lightning.run stage=oracle workspace=W)")
        self.annotated_boxes = ctx.boxes
        settings = from_block(OracleSettings, ctx.cfg.oracle, "oracle")
        truth = truth_call_boxes(ctx.data_root.root, list(ctx.train.recording_ids), ctx.scheme,
                                 float(ctx.cfg.data.duration_s), settings.min_snr_db)
        self.label_counts = {"tp_boxes": int(len(truth)), "min_snr_db": settings.min_snr_db,
                             "annotated_tp_boxes": int(ctx.boxes["is_tp"].astype(bool).sum()),
                             "fp_boxes": int((~ctx.boxes["is_tp"].astype(bool)).sum()),
                             "source": str(calls_path(ctx.data_root.root))}
        super().__init__(with_train_boxes(ctx, oracle_boxes(ctx.boxes, truth)), name)

    @property
    def band_boxes(self) -> pd.DataFrame:
        """The annotated boxes' bands, as the bootstrap has them: only the labels differ, not the input."""
        return self.annotated_boxes

    def run(self):
        if self.ctx.is_global_zero:
            self.state.stage(self.name)["labels"] = self.label_counts
        return super().run()
