"""The truth and annotation tables of a plan (``truth/*.csv``, ``train_tp.csv``, ``train_fp.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import CALL_COLUMNS, CONFUSER_COLUMNS, DISTRACTOR_COLUMNS, SHAPE_COLUMNS, SPLITS
from .species import SPECIES
from .plan import RecordingPlan, SyntheticPlan


def _calls_frame(plan: SyntheticPlan) -> pd.DataFrame:
    rows = [(p.split, p.recording_id, e.species_id, e.songtype_id, e.t_min, e.t_max, e.f_min, e.f_max,
             e.snr_db, e.label)
            for p in plan.train + plan.test for e in p.events if e.is_call]
    return pd.DataFrame(rows, columns=CALL_COLUMNS)


def _confusers_frame(plan: SyntheticPlan) -> pd.DataFrame:
    rows = [(p.split, p.recording_id, e.species_id, e.songtype_id, e.kind, e.t_min, e.t_max, e.f_min,
             e.f_max, e.snr_db, e.label)
            for p in plan.train + plan.test for e in p.events if not e.is_call and not e.distractor]
    return pd.DataFrame(rows, columns=CONFUSER_COLUMNS)


def _distractors_frame(plan: SyntheticPlan) -> pd.DataFrame:
    rows = [(p.split, p.recording_id, e.kind, e.t_min, e.t_max, e.f_min, e.f_max, e.snr_db)
            for p in plan.train + plan.test for e in p.events if e.distractor]
    return pd.DataFrame(rows, columns=DISTRACTOR_COLUMNS)


def _call_shapes_frame(plan: SyntheticPlan) -> pd.DataFrame:
    """The song of every call (calls.csv order): the individual's version, or the nominal one at
    variation 0; lets a study check how far individuals are apart."""
    rows = []
    for p in plan.train + plan.test:
        for e in p.events:
            if e.is_call:
                v = e.voice or SPECIES[e.species_id].song(e.songtype_id)
                rows.append((p.split, p.recording_id, e.species_id, e.songtype_id, e.t_min, e.individual,
                             round(v.f_a, 1), round(v.f_b, 1), round(v.duration_s, 4), round(v.fm_depth, 5),
                             round(v.fm_rate, 3), round(v.pulse_rate, 3), round(v.pulse_duty, 4),
                             round(v.am_rate, 3), round(v.am_depth, 4), round(v.note_scale, 4),
                             round(v.gap_scale, 4), round(v.curve, 4)))
    return pd.DataFrame(rows, columns=SHAPE_COLUMNS)


def _labels_frame(plans: list[RecordingPlan], n_species: int, scores: bool = True) -> pd.DataFrame:
    """Clip presence (0/1) in sample-submission format; all zeros if not `scores`."""
    y = np.zeros((len(plans), n_species), dtype=np.int64)
    if scores:
        for i, p in enumerate(plans):
            for e in p.events:
                if e.is_call:
                    y[i, e.species_id] = 1
    frame = pd.DataFrame(y, columns=[f"s{k}" for k in range(n_species)])
    frame.insert(0, "recording_id", [p.recording_id for p in plans])
    return frame


def _stats(plan: SyntheticPlan, extras: dict) -> dict:
    """Summary statistics stored in the manifest (label coverage, SNR, presence)."""
    cfg = plan.config
    calls = _calls_frame(plan)
    conf = _confusers_frame(plan)
    train_calls = calls[calls["split"] == "train"]
    per_species_train = train_calls.groupby("species_id").size().reindex(range(cfg.n_species), fill_value=0)
    per_species_test = calls[calls["split"] == "test"].groupby("species_id").size().reindex(
        range(cfg.n_species), fill_value=0)
    tp_share = per_species_train.rdiv(cfg.tp_per_species).where(per_species_train > 0, 0.0)
    test_presence = _labels_frame(plan.test, cfg.n_species).iloc[:, 1:].to_numpy().mean(axis=0)
    tp_snr = calls.loc[calls["label"] == "tp", "snr_db"]
    n_test = len(plan.test)
    return {
        "n_calls": {"train": int(len(train_calls)), "test": int((calls["split"] == "test").sum())},
        "n_confusers": {s: int((conf["split"] == s).sum()) for s in SPLITS},
        "n_tp_rows": int(len(plan.tp)),
        "n_fp_rows": int(len(plan.fp)),
        "tp_share_of_train_calls": round(len(plan.tp) / max(len(train_calls), 1), 4),
        "share_calls_below_0db": round(float((calls["snr_db"] < 0).mean()) if len(calls) else 0.0, 4),
        "calls_per_species_train": [int(v) for v in per_species_train],
        "calls_per_species_test": [int(v) for v in per_species_test],
        "tp_share_per_species": [round(float(v), 4) for v in tp_share],
        "extra_train_calls_per_species": extras["extra_calls"],
        "extra_train_confusers_per_species": extras["extra_confusers"],
        "test_presence_per_species": [round(float(v), 4) for v in test_presence],
        "mean_species_per_test_clip": round(float(test_presence.sum()), 3),
        "per_test_clip": {
            "calls": round(int((calls["split"] == "test").sum()) / n_test, 2),
            "confusers": round(int((conf["split"] == "test").sum()) / n_test, 2),
            "distractors": round(sum(e.distractor for p in plan.test for e in p.events) / n_test, 2),
        },
        "tp_snr_db_quartiles": [round(float(q), 2) for q in np.quantile(tp_snr, [0.25, 0.5, 0.75])],
        "share_tp_below_0db": round(float((tp_snr < 0).mean()), 4),
        "share_clips_with": _scene_shares(plan.train + plan.test),
    }


def _scene_shares(plans: list[RecordingPlan]) -> dict:
    """Share of recordings with each background sound (insects, rain, wind, clicks)."""
    has = {"insects": lambda p: bool(p.insects), "rain": lambda p: p.rain is not None,
           "wind": lambda p: p.wind is not None, "clicks": lambda p: p.clicks is not None}
    return {name: round(sum(test(p) for p in plans) / len(plans), 4) for name, test in has.items()}


def _write_tables(plan: SyntheticPlan, out: Path) -> None:
    """All CSVs of the layout (audio and manifest are written separately)."""
    cfg = plan.config
    (out / "truth").mkdir(parents=True, exist_ok=True)
    plan.tp.to_csv(out / "train_tp.csv", index=False)
    plan.fp.to_csv(out / "train_fp.csv", index=False)
    _labels_frame(plan.test, cfg.n_species, scores=False).to_csv(out / "sample_submission.csv", index=False)
    _labels_frame(plan.test, cfg.n_species).to_csv(out / "truth" / "test_labels.csv", index=False)
    _labels_frame(plan.train, cfg.n_species).to_csv(out / "truth" / "train_labels.csv", index=False)
    _calls_frame(plan).to_csv(out / "truth" / "calls.csv", index=False)
    _confusers_frame(plan).to_csv(out / "truth" / "confusers.csv", index=False)
    _distractors_frame(plan).to_csv(out / "truth" / "distractors.csv", index=False)
    _call_shapes_frame(plan).to_csv(out / "truth" / "call_shapes.csv", index=False)
