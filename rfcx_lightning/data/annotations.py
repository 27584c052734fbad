"""Read and validate an RFCx data root in the Kaggle layout.

The training signal of this task is a few thousand hand-drawn boxes, so a single bad row (a lost leading
zero in a recording id, a box past the end of the clip, a species the submission does not know) silently
corrupts a fold or a label grid. Everything here fails loudly instead, naming the file, the CSV line
(header = line 1) and the field, so the fix is a one-line edit of the CSV.

Layout::

    root/train/<recording_id>.flac
    root/test/<recording_id>.flac
    root/train_tp.csv, root/train_fp.csv     recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max
    root/sample_submission.csv               recording_id,s0,...,s23
"""

from __future__ import annotations

import re
import warnings
from csv import QUOTE_MINIMAL
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import soundfile as sf

__all__ = [
    "ANNOTATION_COLUMNS",
    "AnnotationError",
    "ClassScheme",
    "DataRoot",
    "check_recording_id",
    "is_auto_length",
    "load_annotations",
    "load_boxes",
]

ANNOTATION_COLUMNS = ("recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max")
_INT_COLUMNS = ("species_id", "songtype_id")
_FLOAT_COLUMNS = ("t_min", "f_min", "t_max", "f_max")
_SPLITS = ("train", "test")
_SPECIES_COLUMN = re.compile(r"^s(\d+)$")
# How many offending lines an error message lists before summarising the rest as a count.
_MAX_LINES_SHOWN = 5


class AnnotationError(ValueError):
    """A CSV row (or the layout) is invalid; the message names the file, the CSV line and the field."""


def _line_of(row_position: int) -> int:
    """CSV line number of the data row at 0-based position `row_position` (the header is line 1)."""
    return int(row_position) + 2


def _fail(path: Path, positions: Sequence[int], field_name: str, problem: str, values: Sequence = ()) -> None:
    """Raise an AnnotationError naming the file, the first offending line(s) and the field.

    Listing a handful of lines (not just the first) lets the user see whether a problem is one typo or a
    systematic export error, without flooding the terminal for a 8000-row CSV.
    """
    shown = [_line_of(p) for p in positions[:_MAX_LINES_SHOWN]]
    where = "line " + str(shown[0]) if len(shown) == 1 else "lines " + ", ".join(map(str, shown))
    more = f" (and {len(positions) - len(shown)} more)" if len(positions) > len(shown) else ""
    example = f" (value {values[0]!r})" if len(values) else ""
    raise AnnotationError(f"{path}: {where}{more}, field '{field_name}': {problem}{example}")


def check_recording_id(recording_id: str) -> str:
    """Return `recording_id` if it is a plain file stem, else raise ValueError.

    Recording ids become file names (`train/<id>.flac`, cache `<id>.npy`); an id such as `../x` or `a/b`
    would read or write outside the data root, and a leading dot makes a hidden file that globbing skips.
    """
    if not isinstance(recording_id, str):
        raise ValueError(f"recording_id must be a str, got {type(recording_id).__name__} {recording_id!r}")
    problem = _recording_id_problem(recording_id)
    if problem:
        raise ValueError(f"invalid recording_id {recording_id!r}: {problem}")
    return recording_id


def _recording_id_problem(recording_id: str) -> str | None:
    """Why `recording_id` is not usable as a plain file name, or None if it is."""
    if recording_id == "" or recording_id.strip() == "":
        return "empty"
    if "/" in recording_id or "\\" in recording_id:
        return "contains a path separator"
    if ".." in recording_id:
        return "contains '..'"
    if recording_id.startswith("."):
        return "starts with '.'"
    if recording_id != recording_id.strip():
        return "has leading or trailing whitespace"
    if "\x00" in recording_id:
        return "contains a NUL character"
    return None


def _flac_stems(directory: Path) -> list[str]:
    """Sorted stems of `directory/*.flac` (empty if the directory is missing)."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.flac") if p.is_file())


def _read_csv_as_strings(path: Path, sep: str = ",", quoting: int = QUOTE_MINIMAL) -> pd.DataFrame:
    """Read a CSV (or, with a tab `sep`, a tab-separated table such as a Raven selection table, which
    Raven writes unquoted: `quoting=csv.QUOTE_NONE`) with every column as str and no NA guessing.

    Reading everything as text is what keeps `000316000` from becoming the integer 316000; numeric
    columns are converted afterwards, with an error that points at the offending line.
    """
    try:
        return pd.read_csv(path, sep=sep, quoting=quoting, dtype=str, keep_default_na=False, na_filter=False)
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text ({exc}); re-save the file as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise AnnotationError(f"{path}: line 1: the file is empty (expected a header row)") from exc
    except pd.errors.ParserError as exc:
        raise AnnotationError(f"{path}: cannot parse CSV: {exc}") from exc


@dataclass(frozen=True)
class DataRoot:
    """A data root in the Kaggle RFCx layout; methods read it lazily so constructing one is free."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def tp_csv(self) -> Path:
        return self.root / "train_tp.csv"

    @property
    def fp_csv(self) -> Path:
        return self.root / "train_fp.csv"

    @property
    def sample_submission_csv(self) -> Path:
        return self.root / "sample_submission.csv"

    def train_ids(self) -> list[str]:
        """Sorted stems of train/*.flac (every training recording, labeled or not)."""
        return _flac_stems(self.train_dir)

    def test_ids(self) -> list[str]:
        """Test recording ids, in sample_submission.csv order if it exists (the order Kaggle expects),
        else the sorted stems of test/*.flac."""
        if self.sample_submission_csv.is_file():
            frame = _read_csv_as_strings(self.sample_submission_csv)
            if "recording_id" not in frame.columns:
                raise AnnotationError(f"{self.sample_submission_csv}: line 1: missing column 'recording_id'")
            ids = frame["recording_id"].tolist()
            for pos, rid in enumerate(ids):
                problem = _recording_id_problem(rid)
                if problem:
                    _fail(self.sample_submission_csv, [pos], "recording_id", problem, [rid])
            return ids
        return _flac_stems(self.test_dir)

    def audio_path(self, split: str, recording_id: str) -> Path:
        """Path of the FLAC file of `recording_id` in `split` ('train' or 'test')."""
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        return (self.train_dir if split == "train" else self.test_dir) / f"{check_recording_id(recording_id)}.flac"

    def recording_seconds(self, split: str, recording_ids: Sequence[str] | None = None) -> dict[str, float]:
        """Length in seconds of each recording of ``split`` (all of them by default), from the file headers.

        For data sets whose recordings differ in length (``data.duration_s=auto``): boxes are checked
        against their own recording's end, and the frame grid is the longest recording.
        """
        ids = (self.train_ids() if split == "train" else self.test_ids()) if recording_ids is None else recording_ids
        seconds = {}
        for rid in ids:
            path = self.audio_path(split, rid)
            try:
                info = sf.info(str(path))
            except Exception as exc:  # libsndfile raises several types for missing/corrupt files
                raise AnnotationError(f"{path}: cannot read the audio header ({type(exc).__name__}: {exc})") from exc
            if info.frames <= 0:
                raise AnnotationError(f"{path}: empty audio file (0 frames)")
            seconds[str(rid)] = info.frames / float(info.samplerate)
        return seconds

    def species_ids(self) -> list[int]:
        """Species ids in submission column order.

        The submission columns define the output space, so they win when sample_submission.csv exists;
        otherwise the sorted species seen in train_tp.csv and train_fp.csv.
        """
        if self.sample_submission_csv.is_file():
            columns = pd.read_csv(self.sample_submission_csv, nrows=0).columns
            species = [int(m.group(1)) for c in columns if (m := _SPECIES_COLUMN.match(c))]
            if not species:
                raise AnnotationError(
                    f"{self.sample_submission_csv}: line 1: no species columns s0..sN in header {list(columns)}"
                )
            if len(set(species)) != len(species):
                raise AnnotationError(f"{self.sample_submission_csv}: line 1: duplicate species columns")
            return species
        found: set[int] = set()
        for csv in (self.tp_csv, self.fp_csv):
            if csv.is_file():
                frame = _read_csv_as_strings(csv)
                if "species_id" in frame.columns:
                    values = pd.to_numeric(frame["species_id"], errors="coerce").dropna()
                    found.update(int(v) for v in values if float(v).is_integer())
        if not found:
            raise AnnotationError(
                f"{self.root}: cannot determine species: no sample_submission.csv and no species in "
                f"{self.tp_csv.name} / {self.fp_csv.name}"
            )
        return sorted(found)

    def check(self, require_test: bool = False) -> None:
        """Raise FileNotFoundError listing every missing part of the layout (not just the first one).

        train/, train_tp.csv and train_fp.csv are required; test/ (with sample_submission.csv) only when
        `require_test`, since training and cross-validation do not need the test set.
        """
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} does not exist or is not a directory")
        missing = []
        if not self.train_dir.is_dir():
            missing.append(f"{self.train_dir}/ (directory of training .flac files)")
        elif not self.train_ids():
            missing.append(f"{self.train_dir}/*.flac (the directory has no .flac files)")
        for csv in (self.tp_csv, self.fp_csv):
            if not csv.is_file():
                missing.append(str(csv))
        if require_test:
            if not self.test_dir.is_dir():
                missing.append(f"{self.test_dir}/ (directory of test .flac files)")
            if not self.sample_submission_csv.is_file():
                missing.append(str(self.sample_submission_csv))
        if missing:
            raise FileNotFoundError(
                f"data root {self.root} is not in the Kaggle RFCx layout; missing:\n  " + "\n  ".join(missing)
            )


@dataclass(frozen=True)
class ClassScheme:
    """The model's output classes: one per species (default), or one per (species, songtype) pair.

    Songtype classes let a model learn the two calls of a species separately (their frequency boxes
    differ); the submission is per species, so `species_of_class` maps each class back to its species
    column and scores are aggregated by max.
    """

    species: tuple[int, ...]
    by_songtype: bool = False
    pairs: tuple[tuple[int, int], ...] = ()
    _lookup: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "species", tuple(int(s) for s in self.species))
        object.__setattr__(self, "pairs", tuple((int(s), int(t)) for s, t in self.pairs))
        if not self.species:
            raise ValueError("ClassScheme needs at least one species")
        if len(set(self.species)) != len(self.species):
            raise ValueError(f"duplicate species in {self.species}")
        if self.by_songtype:
            if len(set(self.pairs)) != len(self.pairs):
                raise ValueError(f"duplicate (species, songtype) pairs in {self.pairs}")
            unknown = sorted({s for s, _ in self.pairs} - set(self.species))
            if unknown:
                raise ValueError(f"pairs name species {unknown} that are not in species {self.species}")
            uncovered = sorted(set(self.species) - {s for s, _ in self.pairs})
            if uncovered:
                raise ValueError(f"species {uncovered} have no (species, songtype) class; every species needs one")
            lookup = {pair: i for i, pair in enumerate(self.pairs)}
        else:
            if self.pairs:
                raise ValueError("pairs are only meaningful with by_songtype=True")
            lookup = {s: i for i, s in enumerate(self.species)}
        object.__setattr__(self, "_lookup", lookup)

    @property
    def n_classes(self) -> int:
        return len(self.pairs) if self.by_songtype else len(self.species)

    @property
    def class_names(self) -> list[str]:
        """'s3' per species, or 's3_t4' per (species, songtype)."""
        if self.by_songtype:
            return [f"s{s}_t{t}" for s, t in self.pairs]
        return [f"s{s}" for s in self.species]

    def index_of(self, species: int, songtype: int | None = None) -> int:
        """Class index of a species (songtype ignored unless by_songtype, where it is required)."""
        if self.by_songtype:
            if songtype is None:
                raise ValueError("songtype is required when the scheme is by songtype")
            key = (int(species), int(songtype))
        else:
            key = int(species)
        try:
            return self._lookup[key]
        except KeyError:
            raise KeyError(f"no class for {key!r}; classes are {self.class_names}") from None

    def class_indices(self, species: Iterable[int], songtype: Iterable[int]) -> np.ndarray:
        """Vectorised index_of over two aligned sequences (e.g. the columns of a box table)."""
        return np.asarray([self.index_of(s, t) for s, t in zip(species, songtype)], dtype=np.int64)

    @property
    def species_of_class(self) -> np.ndarray:
        """int64 array (n_classes,): the species *column* (position in `species`) of each class."""
        column = {s: i for i, s in enumerate(self.species)}
        if self.by_songtype:
            return np.asarray([column[s] for s, _ in self.pairs], dtype=np.int64)
        return np.arange(len(self.species), dtype=np.int64)

    def to_species_scores(self, scores: np.ndarray) -> np.ndarray:
        """Aggregate class scores (..., n_classes) to species columns (..., n_species) by max."""
        scores = np.asarray(scores)
        if scores.shape[-1] != self.n_classes:
            raise ValueError(f"last axis has {scores.shape[-1]} classes, the scheme has {self.n_classes}")
        if not self.by_songtype:
            return scores
        out = np.full(scores.shape[:-1] + (len(self.species),), -np.inf, dtype=np.result_type(scores, np.float32))
        for cls, col in enumerate(self.species_of_class):
            out[..., col] = np.maximum(out[..., col], scores[..., cls])
        return out

    @classmethod
    def from_data(cls, species_ids: Sequence[int], annotations: pd.DataFrame, by_songtype: bool) -> "ClassScheme":
        """Build the scheme from the species list and the (species, songtype) pairs seen in the boxes.

        With by_songtype, a species that has no box at all still needs a class (it has a submission
        column); it gets the smallest songtype seen in the data (1 for RFCx) as a placeholder.
        """
        species = tuple(int(s) for s in species_ids)
        if not by_songtype:
            return cls(species=species)
        seen = annotations[["species_id", "songtype_id"]].drop_duplicates()
        pairs = {(int(s), int(t)) for s, t in seen.itertuples(index=False)}
        unknown = sorted({s for s, _ in pairs} - set(species))
        if unknown:
            raise ValueError(f"annotations contain species {unknown} that are not in species_ids {list(species)}")
        placeholder = min((t for _, t in pairs), default=1)
        covered = {s for s, _ in pairs}
        pairs |= {(s, placeholder) for s in species if s not in covered}
        order = {s: i for i, s in enumerate(species)}
        ordered = tuple(sorted(pairs, key=lambda p: (order[p[0]], p[1])))
        return cls(species=species, by_songtype=True, pairs=ordered)


def load_annotations(
    path,
    *,
    is_tp: bool,
    audio_dir: Path | None,
    species_ids: Sequence[int],
    duration_s: float | Mapping[str, float] = 60.0,
    native_sample_rate: int = 48000,
    time_tolerance_s: float = 0.05,
) -> pd.DataFrame:
    """Read one box CSV (train_tp.csv or train_fp.csv) and validate every row.

    Returns ANNOTATION_COLUMNS + `is_tp` (bool), with recording_id as str, species/songtype as int64 and
    times/frequencies as float64; duplicate rows are dropped with a warning. Times within
    `time_tolerance_s` outside [0, duration_s] are clipped (annotation tools round); anything further out
    is an error. `duration_s` is one length for every recording, or each recording's own length by id
    (recordings of different lengths). `audio_dir=None` skips the audio-exists check (e.g. for a CSV
    validated before download).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    raw = _read_csv_as_strings(path)
    missing = [c for c in ANNOTATION_COLUMNS if c not in raw.columns]
    if missing:
        raise AnnotationError(
            f"{path}: line 1 (header), field(s) {missing}: missing column(s); found {list(raw.columns)}"
        )
    frame = pd.DataFrame({"recording_id": raw["recording_id"].astype(str)})
    _check_recording_ids(path, frame["recording_id"])
    for col in _INT_COLUMNS:
        frame[col] = _parse_numbers(path, raw[col], col, integer=True)
    for col in _FLOAT_COLUMNS:
        frame[col] = _parse_numbers(path, raw[col], col, integer=False)
    frame = _check_times(path, frame, _row_durations(frame, duration_s), time_tolerance_s)
    _check_frequencies(path, frame, native_sample_rate)
    _check_species(path, frame, species_ids)
    if audio_dir is not None:
        _check_audio_exists(path, frame, Path(audio_dir))
    frame = _drop_duplicates(path, frame)
    frame["is_tp"] = bool(is_tp)
    return frame[list(ANNOTATION_COLUMNS) + ["is_tp"]].reset_index(drop=True)


def _check_recording_ids(path: Path, ids: pd.Series) -> None:
    """Every id must be a plain file stem (see check_recording_id)."""
    for pos, rid in enumerate(ids):
        problem = _recording_id_problem(rid)
        if problem:
            _fail(path, [pos], "recording_id", f"not a plain file name: {problem}", [rid])


def _parse_numbers(path: Path, column: pd.Series, name: str, *, integer: bool) -> pd.Series:
    """Convert a text column to numbers, failing on the first line that is empty, non-numeric,
    non-finite, or (for ids) not a whole number."""
    values = pd.to_numeric(column.str.strip(), errors="coerce").astype(float)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        pos = np.flatnonzero(bad)
        _fail(path, pos.tolist(), name, "not a finite number", column.iloc[pos].tolist())
    if integer:
        arr = values.to_numpy()
        bad = arr != np.round(arr)
        if bad.any():
            pos = np.flatnonzero(bad)
            _fail(path, pos.tolist(), name, "not an integer", column.iloc[pos].tolist())
        return values.astype(np.int64)
    return values.astype(np.float64)


def _field_names(fields: Mapping[str, str] | None):
    """Name of a frame column as the user's file calls it (`fields` maps e.g. t_min -> 'Begin Time (s)'),
    so a check shared by several input formats reports the column the user has to edit."""
    fields = dict(fields or {})
    return lambda name: fields.get(name, name)


def is_auto_length(value) -> bool:
    """``data.duration_s=auto``: the recordings differ in length (the one parser of that setting)."""
    return str(value).strip().lower() == "auto"


def _row_durations(frame: pd.DataFrame, duration_s: float | Mapping[str, float]) -> float | np.ndarray:
    """The recording length of every row: one number for all, or each row's recording's own length."""
    if not isinstance(duration_s, Mapping):
        return float(duration_s)
    return frame["recording_id"].map(lambda rid: float(duration_s.get(rid, np.inf))).to_numpy(np.float64)


def _check_times(path: Path, frame: pd.DataFrame, duration_s: float | np.ndarray, tol: float,
                 fields: Mapping[str, str] | None = None) -> pd.DataFrame:
    """t_min < t_max, both within the recording; clip excursions no larger than `tol`.

    `duration_s` is one length, or one per row (recordings of different lengths). `fields` renames
    t_min / t_max in the messages (see _field_names)."""
    shown = _field_names(fields)
    t_min, t_max = frame["t_min"].to_numpy(), frame["t_max"].to_numpy()
    duration = np.broadcast_to(np.asarray(duration_s, dtype=np.float64), t_min.shape)
    for bad, name, problem in (
        (t_min >= t_max, "t_min", lambda i: f"{shown('t_min')} must be smaller than {shown('t_max')}"),
        (t_min < -tol, "t_min", lambda i: f"before the start of the recording (tolerance {tol} s)"),
        (t_max > duration + tol, "t_max",
         lambda i: f"after the end of the {float(duration[i])} s recording (tolerance {tol} s)"),
        (t_min >= duration, "t_min", lambda i: f"at or after the end of the {float(duration[i])} s recording"),
        (t_max <= 0, "t_max", lambda i: "at or before the start of the recording"),
    ):
        if bad.any():
            pos = np.flatnonzero(bad)
            _fail(path, pos.tolist(), shown(name), problem(pos[0]), frame[name].iloc[pos].tolist())
    frame = frame.copy()
    frame["t_min"] = np.clip(t_min, 0.0, duration)
    frame["t_max"] = np.clip(t_max, 0.0, duration)
    return frame


def _check_frequencies(path: Path, frame: pd.DataFrame, native_sample_rate: float,
                       fields: Mapping[str, str] | None = None) -> None:
    """0 <= f_min < f_max <= Nyquist of the native recordings (`fields`: see _field_names)."""
    shown = _field_names(fields)
    f_min, f_max = frame["f_min"].to_numpy(), frame["f_max"].to_numpy()
    nyquist = native_sample_rate / 2
    for bad, name, problem in (
        (f_min < 0, "f_min", "negative frequency"),
        (f_min >= f_max, "f_min", f"{shown('f_min')} must be smaller than {shown('f_max')}"),
        (f_max > nyquist, "f_max", f"above the Nyquist frequency {nyquist:g} Hz of {native_sample_rate:g} Hz audio"),
    ):
        if bad.any():
            pos = np.flatnonzero(bad)
            _fail(path, pos.tolist(), shown(name), problem, frame[name].iloc[pos].tolist())


def _check_species(path: Path, frame: pd.DataFrame, species_ids: Sequence[int]) -> None:
    """Every species must have a submission column, else its boxes could never be scored."""
    known = {int(s) for s in species_ids}
    bad = ~frame["species_id"].isin(known).to_numpy()
    if bad.any():
        pos = np.flatnonzero(bad)
        _fail(path, pos.tolist(), "species_id", f"unknown species (known: {sorted(known)})",
              frame["species_id"].iloc[pos].tolist())


def _check_audio_exists(path: Path, frame: pd.DataFrame, audio_dir: Path) -> None:
    """Every annotated recording must have its FLAC file (lost leading zeros show up here)."""
    available = set(_flac_stems(audio_dir))
    bad = ~frame["recording_id"].isin(available).to_numpy()
    if bad.any():
        pos = np.flatnonzero(bad)
        ids = frame["recording_id"].iloc[pos].tolist()
        hint = " (an all-digit id may have lost its leading zeros when the CSV was saved)" if ids[0].isdigit() else ""
        _fail(path, pos.tolist(), "recording_id", f"no audio file <recording_id>.flac in {audio_dir}{hint}", ids)


def _drop_duplicates(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Drop exact duplicate rows (they would double a box's weight), warning with their lines."""
    dup = frame.duplicated(subset=list(ANNOTATION_COLUMNS), keep="first").to_numpy()
    if not dup.any():
        return frame
    first = frame.groupby(list(ANNOTATION_COLUMNS), sort=False).ngroup().to_numpy()
    first_pos = {}
    for pos, group in enumerate(first):
        first_pos.setdefault(group, pos)
    pairs = [f"line {_line_of(p)} (= line {_line_of(first_pos[first[p]])})" for p in np.flatnonzero(dup)]
    shown = ", ".join(pairs[:_MAX_LINES_SHOWN]) + (f" and {len(pairs) - _MAX_LINES_SHOWN} more" if len(pairs) > _MAX_LINES_SHOWN else "")
    warnings.warn(f"{path}: dropped {len(pairs)} duplicate row(s): {shown}", stacklevel=3)
    return frame.loc[~dup]


def load_boxes(
    data_root: DataRoot,
    scheme_by_songtype: bool = False,
    duration_s: float | Mapping[str, float] = 60.0,
    native_sample_rate: int = 48000,
) -> tuple[pd.DataFrame, ClassScheme]:
    """All validated TP and FP boxes of a data root, with their class index, and the class scheme.

    ``duration_s``: the recordings' length, or each train recording's own length by id.

    Columns: ANNOTATION_COLUMNS + is_tp (bool) + class_index (int64); TP rows first, then FP rows.
    """
    data_root = data_root if isinstance(data_root, DataRoot) else DataRoot(Path(data_root))
    data_root.check()
    species_ids = data_root.species_ids()
    kwargs = dict(audio_dir=data_root.train_dir, species_ids=species_ids, duration_s=duration_s,
                  native_sample_rate=native_sample_rate)
    tp = load_annotations(data_root.tp_csv, is_tp=True, **kwargs)
    fp = load_annotations(data_root.fp_csv, is_tp=False, **kwargs)
    boxes = pd.concat([tp, fp], ignore_index=True)
    boxes["recording_id"] = boxes["recording_id"].astype(str)
    boxes["is_tp"] = boxes["is_tp"].astype(bool)
    scheme = ClassScheme.from_data(species_ids, boxes, by_songtype=scheme_by_songtype)
    boxes["class_index"] = scheme.class_indices(boxes["species_id"], boxes["songtype_id"])
    return boxes, scheme
