"""From framewise scores to events: per-class thresholds chosen on the TP/FP boxes, runs of frames merged.

Thresholds. The only labelled positives and negatives a real RFCx train set has are its TP and FP boxes, and
the run's out-of-fold framewise predictions (``<run>/oof_framewise.npz``) score every train recording with
a model that never trained on it. A box's score is the max OOF frame score of its class inside it
(:func:`rfcx_lightning.postprocessing.repredict.box_scores`, shared with the multiscale choice); TP boxes are
positives, FP boxes negatives, and ``detect.threshold`` picks per class:

* ``f1`` (default): the threshold with the best F1 on the boxes (ties: the higher threshold);
* ``precision:P``: the lowest threshold whose precision on the boxes is at least P (most recall at that
  precision); if no threshold reaches P, one just above the highest box score, so the class is silent
  rather than below the asked precision, and the note says so (with the best precision there was);
* a number: that threshold for every class (the box figures are still reported).

A class with no TP box (or no box at all) has nothing to choose from: it gets :data:`FALLBACK_THRESHOLD`,
and ``thresholds.csv`` says so in its ``note`` column. FP boxes are hard negatives (confusers an earlier
detector fired on), so box precision is a pessimistic estimate of precision on ordinary audio.

Events: consecutive frames at or above the class threshold are one event, ending with its last frame; its
score is the max inside. Its onset (``detect.onset``):

* ``peak`` (default): the time of the event's peak frame (refined between frames by a parabola) plus an
  offset learnt per class from the run's own out-of-fold predictions: the median, over the class's TP
  boxes, of the box's ``t_min`` minus the peak time of the nearest event of its class (:func:`onset_offset`;
  classes with few such boxes take the median over all classes). Why: an output
  frame of a CNN spans the backbone's time stride (0.64 s for the cpu preset's band detector) and its
  receptive field reaches further, so scores rise well before a call; the first frame above the threshold
  came a median 0.4 s before the onset of a loud call at the hard level, and only 27% of loud calls had an
  event starting within 0.5 s, while the peak plus the learnt offset (-0.46 s) put 70% there (docs/results.md,
  "Detection");
* ``threshold``: the start of the first frame at or above the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

FALLBACK_THRESHOLD = 0.5
#: TP boxes near an OOF event a class needs for an onset offset of its own (fewer: the pooled offset)
ONSET_MIN_BOXES = 5
THRESHOLD_COLUMNS = ("class", "threshold", "n_tp", "n_fp", "precision", "recall", "rule", "note")


@dataclass(frozen=True)
class ThresholdRule:
    kind: str               # f1 | precision | fixed
    value: float | None = None

    @classmethod
    def parse(cls, spec) -> "ThresholdRule":
        """``f1``, ``precision:0.9`` or a number; anything else is a ValueError naming detect.threshold."""
        text = str(spec).strip()
        if text == "f1":
            return cls("f1")
        if text.startswith("precision:"):
            try:
                value = float(text.split(":", 1)[1])
            except ValueError:
                value = float("nan")
            if not 0.0 < value <= 1.0:
                raise ValueError(f"detect.threshold={spec!r}: precision:P needs 0 < P <= 1, e.g. precision:0.9")
            return cls("precision", value)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"detect.threshold={spec!r}: choose f1, precision:P (e.g. precision:0.9) or a "
                             "number in [0, 1]") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"detect.threshold={spec!r}: a fixed threshold must lie in [0, 1]")
        return cls("fixed", value)

    def __str__(self) -> str:
        if self.kind == "f1":
            return "f1"
        return f"precision:{self.value:g}" if self.kind == "precision" else f"{self.value:g}"


def box_figures(scores: np.ndarray, is_tp: np.ndarray, threshold: float) -> dict:
    """TP/FP counts and precision/recall of the boxes at ``threshold`` (a box is detected at score >= it)."""
    is_tp = np.asarray(is_tp, bool)
    hit = np.asarray(scores) >= threshold
    tp, fp = int((hit & is_tp).sum()), int((hit & ~is_tp).sum())
    n_pos = int(is_tp.sum())
    return {"precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / n_pos if n_pos else float("nan")}


def choose_threshold(scores: np.ndarray, is_tp: np.ndarray, rule: ThresholdRule) -> dict:
    """One class's threshold under ``rule`` from its box scores; with the figures of thresholds.csv."""
    scores, is_tp = np.asarray(scores, np.float64), np.asarray(is_tp, bool)
    n_tp, n_fp = int(is_tp.sum()), int((~is_tp).sum())
    note = ""
    if rule.kind == "fixed":
        threshold = float(rule.value)
    elif n_tp == 0:
        threshold = FALLBACK_THRESHOLD
        note = ("no box" if n_tp + n_fp == 0 else "no TP box") + f": fallback threshold {FALLBACK_THRESHOLD}"
    else:
        candidates = np.unique(scores)[::-1]                     # descending: a box is detected at >= t
        tp = np.asarray([(scores[is_tp] >= t).sum() for t in candidates], np.float64)
        fp = np.asarray([(scores[~is_tp] >= t).sum() for t in candidates], np.float64)
        precision = tp / np.maximum(tp + fp, 1)
        recall = tp / n_tp
        if rule.kind == "f1":
            f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
            threshold = float(candidates[int(np.argmax(f1))])        # first max: the highest threshold
        else:
            reached = np.flatnonzero(precision >= rule.value - 1e-12)
            if len(reached):
                threshold = float(candidates[reached[-1]])           # the lowest threshold reaching it
            else:  # asked-for precision is out of reach: silence the class rather than break the promise
                best = int(np.argmax(precision))
                threshold = float(np.nextafter(np.float32(candidates[0]), np.float32(np.inf)))
                note = (f"precision {rule.value:g} not reached on the boxes (best {precision[best]:.3f} at "
                        f"{candidates[best]:.4f}): threshold above every box score, class effectively off")
    return {"threshold": threshold, "n_tp": n_tp, "n_fp": n_fp, **box_figures(scores, is_tp, threshold),
            "rule": str(rule), "note": note}


def class_thresholds(oof_framewise: np.ndarray, recording_ids, boxes: pd.DataFrame, class_names,
                     duration_s: float, rule: ThresholdRule) -> pd.DataFrame:
    """thresholds.csv: one row per class from the OOF framewise scores (N, C, T) on the TP/FP boxes."""
    from ..postprocessing.repredict import box_scores

    known = set(map(str, recording_ids))
    boxes = boxes[boxes["recording_id"].astype(str).isin(known)]
    rows = []
    for c, name in enumerate(class_names):
        sel = boxes[boxes["class_index"] == c]
        scores = box_scores(oof_framewise, recording_ids, sel, duration_s) if len(sel) else np.zeros(0)
        rows.append({"class": name, **choose_threshold(scores, sel["is_tp"].to_numpy(bool), rule)})
    return pd.DataFrame(rows, columns=list(THRESHOLD_COLUMNS))


ONSETS = ("peak", "threshold")


def _runs(above: np.ndarray) -> list[tuple[int, int]]:
    """``[a, b)`` frame ranges of the consecutive True values of one class's row."""
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def peak_time(row: np.ndarray, a: int, b: int, frames_per_second: float) -> float:
    """Seconds of the highest frame of ``row[a:b]`` (its centre), moved by a parabola through it and its
    neighbours (at most half a frame), so two events whose peaks differ by less than a frame differ too."""
    k = a + int(np.argmax(row[a:b]))
    shift = 0.0
    if 0 < k < len(row) - 1:
        left, mid, right = float(row[k - 1]), float(row[k]), float(row[k + 1])
        curvature = left - 2.0 * mid + right
        if curvature < 0:
            shift = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return (k + 0.5 + shift) / frames_per_second


def merge_events(framewise: np.ndarray, thresholds: np.ndarray, frames_per_second: float,
                 duration_s: float | None = None, onset_offset_s: float | np.ndarray | None = None) -> pd.DataFrame:
    """Events of one file: columns class_index, start_s, end_s, score (sorted by start, then class).

    ``framewise`` (C, T); a run of consecutive frames with score >= the class's threshold is one event,
    ending with its last frame. Its start: with ``onset_offset_s`` None the start of its first frame
    (``detect.onset=threshold``), else its peak time plus the offset (``peak``; one for all classes or one
    per class; module docstring), kept within the file and before the event's end.
    """
    frames = np.asarray(framewise, np.float32)
    offsets = None if onset_offset_s is None else np.broadcast_to(np.asarray(onset_offset_s, np.float64), (len(frames),))
    above = frames >= np.asarray(thresholds, np.float32)[:, None]
    rows = []
    for c in np.flatnonzero(above.any(1)):
        for a, b in _runs(above[c]):                                                  # frames [a, b)
            end = b / frames_per_second
            end = min(end, duration_s) if duration_s else end
            if offsets is None:
                start = a / frames_per_second
            else:
                start = min(max(0.0, peak_time(frames[c], a, b, frames_per_second) + offsets[c]),
                            end - 0.5 / frames_per_second)
            rows.append((int(c), start, end, float(frames[c, a:b].max())))
    table = pd.DataFrame(rows, columns=["class_index", "start_s", "end_s", "score"])
    return table.sort_values(["start_s", "class_index"], kind="stable").reset_index(drop=True)


def onset_offset(oof_framewise: np.ndarray, recording_ids, boxes: pd.DataFrame, thresholds: np.ndarray,
                 duration_s: float, max_distance_s: float = 1.5,
                 min_boxes: int = ONSET_MIN_BOXES) -> tuple[np.ndarray, np.ndarray]:
    """The ``peak`` onsets' offsets, one per class, and how many TP boxes each came from.

    For each TP box, the gap from the peak time of the nearest event of its class in the run's out-of-fold
    frames to the box's ``t_min``, counted when within ``max_distance_s`` or the class's median TP box
    length, whichever is longer. A class with at least ``min_boxes`` gaps gets their median; the others
    get the median of all classes' gaps (0.0 when there is none). Why per class: a long call (a 6.5 s
    trill) peaks seconds after its onset, a chirp at it, so one offset for all misplaced the long calls
    (docs/results.md "Detection", per class on the default data).
    """
    row = {str(r): i for i, r in enumerate(recording_ids)}
    frames = np.asarray(oof_framewise, np.float32)
    n_classes = frames.shape[1]
    fps = frames.shape[-1] / float(duration_s)
    thresholds = np.asarray(thresholds, np.float32)
    tp = boxes.loc[boxes["is_tp"].astype(bool)]
    lengths = (tp["t_max"] - tp["t_min"]).groupby(tp["class_index"]).median()
    gaps: dict[int, list[float]] = {c: [] for c in range(n_classes)}
    for r, c, t_min in tp[["recording_id", "class_index", "t_min"]].itertuples(index=False):
        i = row.get(str(r))
        if i is None:
            continue
        peaks = np.asarray([peak_time(frames[i, c], a, b, fps) for a, b in _runs(frames[i, c] >= thresholds[c])])
        if len(peaks):
            gap = float(t_min) - peaks
            nearest = gap[np.argmin(np.abs(gap))]
            if abs(nearest) <= max(max_distance_s, float(lengths.get(c, 0.0))):
                gaps[int(c)].append(nearest)
    pooled = [g for c in gaps for g in gaps[c]]
    fallback = float(np.median(pooled)) if pooled else 0.0
    offsets = np.asarray([np.median(gaps[c]) if len(gaps[c]) >= min_boxes else fallback for c in range(n_classes)],
                         np.float64)
    return offsets, np.asarray([len(gaps[c]) for c in range(n_classes)])


def score_events(detections: pd.DataFrame, calls: pd.DataFrame, tolerance_s: float = 0.5,
                 key: str = "species_id") -> pd.DataFrame:
    """Per ``key`` (species by default): precision and recall of events against reference calls.

    ``detections`` and ``calls`` both need ``recording_id``, ``key`` and an onset (``start_s`` for
    detections, ``t_min`` for calls). An event matches a call of the same recording and class whose onset
    lies within ``tolerance_s`` of its own; matching is one to one, closest pairs first, so two events on one
    call count one hit and one false alarm. For checking a detector against annotations (the synthetic
    data's ``truth/calls.csv``, or hand-made Raven tables).
    """
    rows = []
    classes = sorted(set(calls[key]).union(detections[key]))
    for cls in classes:
        det = detections[detections[key] == cls]
        ref = calls[calls[key] == cls]
        hits = 0
        for rid in set(det["recording_id"]).intersection(ref["recording_id"]):
            onsets = det.loc[det["recording_id"] == rid, "start_s"].to_numpy(float)
            truth = ref.loc[ref["recording_id"] == rid, "t_min"].to_numpy(float)
            gap = np.abs(onsets[:, None] - truth[None, :])
            pairs = np.argwhere(gap <= tolerance_s)
            pairs = pairs[np.argsort(gap[pairs[:, 0], pairs[:, 1]], kind="stable")]
            used_e, used_c = set(), set()
            for e, c in pairs:
                if e not in used_e and c not in used_c:
                    used_e.add(e)
                    used_c.add(c)
            hits += len(used_e)
        rows.append({key: cls, "events": len(det), "calls": len(ref), "matched": hits,
                     "precision": hits / len(det) if len(det) else float("nan"),
                     "recall": hits / len(ref) if len(ref) else float("nan")})
    return pd.DataFrame(rows, columns=[key, "events", "calls", "matched", "precision", "recall"])
