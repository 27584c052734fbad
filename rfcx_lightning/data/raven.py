"""Raven Pro selection tables: write the detector's boxes, read hand-made (or tool-made) tables.

Raven Pro is what bioacousticians annotate and review recordings in, and OpenSoundscape / BirdNET-Analyzer
write the same format, so a selection table is the natural exchange format for both directions: the
detection stage writes one table per recording for a human to check, and ``data=raven`` trains on tables
people drew (see ``load_raven_root``).

Format: tab-separated text, a header row, one row per selection (``Selection, View, Channel,
Begin Time (s), End Time (s), Low Freq (Hz), High Freq (Hz)`` plus any annotation columns such as
``Species``). Raven writes one row per *view* of a selection (``Spectrogram 1`` and ``Waveform 1``), so
the same Selection number can appear twice; the reader keeps one row per Selection.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from ..workspace import atomic_dir, atomic_path, write_csv, write_json
from .annotations import (ANNOTATION_COLUMNS, AnnotationError, DataRoot, _check_frequencies, _check_times,
                          _fail, _parse_numbers, _read_csv_as_strings, _recording_id_problem, is_auto_length)

__all__ = [
    "RAVEN_COLUMNS",
    "SELECTION_FIELDS",
    "RavenSource",
    "convert_raven_root",
    "ensure_raven_root",
    "read_selection_table",
    "species_labels",
    "write_selection_table",
]

log = logging.getLogger(__name__)

# What write_selection_table writes, in order; the first seven are Raven's own measurement columns.
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species", "Score")
# DataFrame column (library side) -> Raven column, for the box columns write_selection_table accepts.
_TABLE_TO_RAVEN = {
    "begin_s": "Begin Time (s)",
    "end_s": "End Time (s)",
    "low_hz": "Low Freq (Hz)",
    "high_hz": "High Freq (Hz)",
    "species": "Species",
    "score": "Score",
}
_DEFAULT_VIEW = "Spectrogram 1"
# The reader's box columns and the Raven column each comes from (the library's t_min/f_min names are the
# keys the shared checks in annotations.py use; the values are what an error message names).
SELECTION_FIELDS = {"t_min": "Begin Time (s)", "t_max": "End Time (s)",
                    "f_min": "Low Freq (Hz)", "f_max": "High Freq (Hz)"}
_REQUIRED = ("Selection",) + tuple(SELECTION_FIELDS.values())
# Columns that multi-file tables (Raven's file lists, BirdNET-Analyzer) add: Begin Time is then measured
# from the start of the first file, the offset inside the row's own file is in File Offset (s).
_FILE_COLUMNS = ("Begin File", "Begin Path")
_OFFSET_COLUMN = "File Offset (s)"


def write_selection_table(path: str | os.PathLike, table: pd.DataFrame) -> Path:
    """Write ``table`` (columns begin_s, end_s, low_hz, high_hz, species, score) as a Raven selection table.

    Raven Pro opens the file directly ("File > Open Selection Table") over the recording, so a reviewer
    sees every detection as a box on the spectrogram with its species and score. Rows are written in the
    order given and numbered Selection 1..n (Raven requires unique positive selection numbers), all in
    View ``Spectrogram 1`` and Channel 1. The file is written under a temporary name and renamed into
    place, so a killed run never leaves a truncated table that Raven (or ``read_selection_table``) would
    half-read. An empty table writes just the header, which Raven opens as "no selections".

    Raises ValueError naming ``path`` if a column is missing, or a value would make an unreadable table
    (a non-finite number, ``begin_s >= end_s``, ``low_hz >= high_hz``, a negative time/frequency, or a
    tab / newline inside a species name, which would break the tab-separated layout).
    Returns the path written.
    """
    path = Path(path)
    missing = [c for c in _TABLE_TO_RAVEN if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: cannot write selection table: missing column(s) {missing}; "
                         f"got {list(table.columns)}")
    out = pd.DataFrame(index=range(len(table)))
    out["Selection"] = np.arange(1, len(table) + 1, dtype=np.int64)
    out["View"] = _DEFAULT_VIEW
    out["Channel"] = 1
    for src in ("begin_s", "end_s", "low_hz", "high_hz", "score"):
        values = pd.to_numeric(table[src], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: cannot write selection table: row {row}, column '{src}': "
                             f"not a finite number (value {table[src].iloc[row]!r})")
        out[_TABLE_TO_RAVEN[src]] = values
    for lo, hi in (("begin_s", "end_s"), ("low_hz", "high_hz")):
        lo_v, hi_v = out[_TABLE_TO_RAVEN[lo]].to_numpy(), out[_TABLE_TO_RAVEN[hi]].to_numpy()
        for bad, problem in ((lo_v >= hi_v, f"{lo} must be smaller than {hi}"), (lo_v < 0, f"{lo} is negative")):
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{path}: cannot write selection table: row {row}, column '{lo}': {problem} "
                                 f"({lo}={lo_v[row]!r}, {hi}={hi_v[row]!r})")
    species = table["species"].astype(str).reset_index(drop=True)
    bad = species.str.contains(r"[\t\r\n]", regex=True).to_numpy() | (species.str.strip() == "").to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: cannot write selection table: row {row}, column 'species': empty or "
                         f"contains a tab/newline (value {species.iloc[row]!r})")
    out["Species"] = species.to_numpy()
    out = out[list(RAVEN_COLUMNS)]
    with atomic_path(path) as tmp:
        # repr-exact floats (no float_format) so a table read back gives the very same boxes.
        out.to_csv(tmp, sep="\t", index=False, lineterminator="\n", quoting=csv.QUOTE_NONE)
    return path


def read_selection_table(
    path: str | os.PathLike,
    *,
    required: tuple[str, ...] = (),
    duration_s: float | None = None,
    native_sample_rate: float | None = None,
    time_tolerance_s: float = 0.05,
) -> pd.DataFrame:
    """Read and validate one Raven selection table; one row per selection.

    Returns a DataFrame with ``line`` (the row's line in the file, header = line 1, for error messages
    further on), ``selection`` (int), ``t_min, t_max, f_min, f_max`` (float64 seconds / Hz, within the
    recording), ``file`` (the stem of the row's ``Begin File`` / ``Begin Path`` if the table has such a
    column, else ""), and every column of the file under its own name, as text (``Species``, ``Score``,
    ``View``, user columns such as ``Validation``), so the caller decides what an annotation means.

    Raven writes a row per *view* of a selection (``Spectrogram 1`` and ``Waveform 1`` with the same
    Selection number); only one is kept, the spectrogram row if there is one (its frequency bounds are the
    ones drawn), else the first. Rows of one Selection whose times disagree are an error: that is two
    selections sharing a number, not two views. In a multi-file table (a ``File Offset (s)`` column),
    times are taken relative to the row's own file: ``t_min = File Offset``, ``t_max = t_min + duration``.

    Validation (every error an ``AnnotationError`` naming the file, the line(s) and the column, through
    the same checks as the Kaggle CSVs): the standard columns and ``required`` present; Selection a
    positive integer; times and frequencies finite numbers with begin < end, low < high, no negative
    value, times within ``duration_s`` (``time_tolerance_s`` slack, clipped) and frequencies at most the
    Nyquist of ``native_sample_rate`` when those are given.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    raw = _read_csv_as_strings(path, sep="\t", quoting=csv.QUOTE_NONE)    # Raven never quotes
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in _REQUIRED + tuple(required) if c not in raw.columns]
    if missing:
        hint = " (is it tab-separated?)" if len(raw.columns) == 1 else ""
        raise AnnotationError(f"{path}: line 1 (header), column(s) {missing}: missing; found "
                              f"{list(raw.columns)}{hint}")
    frame = pd.DataFrame({"line": np.arange(len(raw), dtype=np.int64) + 2})
    frame["selection"] = _parse_numbers(path, raw["Selection"], "Selection", integer=True)
    bad = np.flatnonzero(frame["selection"].to_numpy() < 1)
    if len(bad):
        _fail(path, bad.tolist(), "Selection", "must be a positive integer", raw["Selection"].iloc[bad].tolist())
    for name, column in SELECTION_FIELDS.items():
        frame[name] = _parse_numbers(path, raw[column], column, integer=False)
    fields = dict(SELECTION_FIELDS)
    if _OFFSET_COLUMN in raw.columns:
        offset = _parse_numbers(path, raw[_OFFSET_COLUMN], _OFFSET_COLUMN, integer=False)
        length = frame["t_max"] - frame["t_min"]
        frame["t_min"], frame["t_max"] = offset, offset + length
        fields["t_min"] = _OFFSET_COLUMN
    file_column = next((c for c in _FILE_COLUMNS if c in raw.columns), None)
    frame["file"] = raw[file_column].map(_file_stem) if file_column else ""
    frame = _check_times(path, frame, float("inf") if duration_s is None else float(duration_s),
                         time_tolerance_s, fields=fields)
    _check_frequencies(path, frame, float("inf") if native_sample_rate is None else float(native_sample_rate),
                       fields=fields)
    for column in raw.columns:
        if column not in frame.columns:
            frame[column] = raw[column].to_numpy()
    return _one_row_per_selection(path, frame)


def _file_stem(value: str) -> str:
    """``Begin File`` / ``Begin Path`` value -> recording id: Raven writes a bare name, BirdNET a path
    (either OS's separators)."""
    value = str(value).strip()
    return Path(value.replace("\\", "/")).stem if value else ""


def _one_row_per_selection(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per Selection (see read_selection_table); the kept rows stay in file order."""
    if not frame["selection"].duplicated().any():
        return frame.reset_index(drop=True)
    for _, group in frame.groupby("selection", sort=False):
        if len(group) < 2:
            continue
        for name in ("t_min", "t_max", "file"):
            values = group[name].to_numpy()
            if (values != values[0]).any():
                pos = group.index[1:][values[1:] != values[0]].tolist()
                file_column = next((c for c in _FILE_COLUMNS if c in frame.columns), "file")
                column = {"t_min": SELECTION_FIELDS["t_min"], "t_max": SELECTION_FIELDS["t_max"]}.get(name, file_column)
                _fail(path, pos, column,
                      f"Selection {int(group['selection'].iloc[0])} appears on line "
                      f"{int(group['line'].iloc[0])} with other times or file; selection numbers must be unique "
                      "(rows of one Selection may differ only in their View)",
                      group[name].iloc[1:].tolist())
    view = frame["View"].astype(str) if "View" in frame.columns else pd.Series("", index=frame.index)
    is_spectrogram = view.str.strip().str.lower().str.startswith("spectrogram")
    # stable sort: spectrogram rows first, then file order, so drop_duplicates keeps the spectrogram view
    order = np.lexsort((frame.index.to_numpy(), ~is_spectrogram.to_numpy()))
    kept = frame.iloc[order].drop_duplicates("selection", keep="first")
    return kept.sort_index().reset_index(drop=True)



# ----------------------------------------------------------------------------------------------------
# data=raven: recordings + selection tables -> the Kaggle layout the rest of the library reads
# ----------------------------------------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"
SPECIES_CSV = "species.csv"            # species_id,label: what submission column s<k> means
SOURCES_CSV = "box_sources.csv"        # where each converted box came from (table file, line)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RavenSource:
    """What ``data=raven`` reads, from the ``data.*`` keys (see ``stages/data/raven.yaml``).

    * ``root``: the recordings (``*.flac`` / ``*.wav``, any name that is a plain file stem), with their
      selection tables beside them unless ``tables`` names another folder.
    * A table belongs to recording ``R`` when its name starts with ``R.`` and matches ``table_glob``
      (Raven's ``R.Table.1.selections.txt``, ``R.selections.txt``, BirdNET's
      ``R.BirdNET.selection.table.txt``); several tables of one recording are combined. A row with a
      ``Begin File`` / ``Begin Path`` column belongs to that file's recording instead (multi-file tables).
    * ``test_dir``: the test recordings (their own tables, if any, are not training data). Unset: the
      recordings of ``root`` that have no table are the test set.
    * Species: the text of ``label_column``; ``species`` (a list) fixes the class ids 0..n-1 in its order
      and makes any other label an error; unset, the sorted distinct labels. ``songtype_column``: an
      integer column for ``data.by_songtype`` (unset: song type 1).
    * TP/FP: with ``validation_column``, rows whose value is in ``tp_values`` are TP boxes, in
      ``fp_values`` FP boxes, in ``skip_values`` ignored, anything else an error; without it every
      selection is a TP box and everything else is unknown.
    """

    root: Path
    tables: Path | None = None
    test_dir: Path | None = None
    label_column: str = "Species"
    species: tuple[str, ...] | None = None
    validation_column: str | None = None
    tp_values: tuple[str, ...] = ("TP",)
    fp_values: tuple[str, ...] = ("FP",)
    skip_values: tuple[str, ...] = ()
    songtype_column: str | None = None
    table_glob: str = "*selection*.txt"
    audio_extensions: tuple[str, ...] = (".flac", ".wav")
    duration_s: float | None = 60.0                  # None (data.duration_s=auto): recordings of any length
    native_sample_rate: int = 48000
    allow_other_rates: bool = False
    duration_tolerance_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("root", "tables", "test_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(str(value)).expanduser().absolute())
        for name in ("species", "tp_values", "fp_values", "skip_values", "audio_extensions"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(str(v).strip() for v in value))
        if self.species is not None:
            dup = sorted({s for s in self.species if self.species.count(s) > 1})
            if dup or not self.species:
                raise ValueError(f"data.species must list distinct labels, got {list(self.species)}")
        clash = (set(self.tp_values) & set(self.fp_values)) | ((set(self.tp_values) | set(self.fp_values))
                                                                & set(self.skip_values))
        if clash:
            raise ValueError(f"data.tp_values / fp_values / skip_values overlap: {sorted(clash)}")

    @classmethod
    def from_config(cls, data, allow_other_rates: bool = False) -> "RavenSource":
        """From the ``data`` config block (a DictConfig or a dict)."""
        def get(key, default=None):
            value = data.get(key, default)
            return default if value is None else value

        def listed(key, default):
            value = data.get(key)
            if value is None:
                return default
            return (value,) if isinstance(value, str) else tuple(value)

        return cls(root=Path(str(data["root"])), tables=get("tables"), test_dir=get("test_dir"),
                   label_column=str(get("label_column", "Species")),
                   species=None if data.get("species") is None else tuple(data.get("species")),
                   validation_column=get("validation_column"), tp_values=listed("tp_values", ("TP",)),
                   fp_values=listed("fp_values", ("FP",)), skip_values=listed("skip_values", ()),
                   songtype_column=get("songtype_column"), table_glob=str(get("table_glob", "*selection*.txt")),
                   audio_extensions=listed("audio_extensions", (".flac", ".wav")),
                   duration_s=_duration_setting(get("duration_s", 60.0)),
                   native_sample_rate=int(get("native_sample_rate", 48000)),
                   allow_other_rates=bool(allow_other_rates))

    def settings(self) -> dict:
        """The conversion settings as JSON-able values (part of the manifest's fingerprint)."""
        out = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in out.items()}


@dataclass
class _Recording:
    recording_id: str
    path: Path
    split: str                                   # "train" | "test"
    seconds: float = 0.0
    native_rate: int = 0
    tables: list[Path] = field(default_factory=list)


def _audio_files(directory: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    """recording id -> audio file of `directory` (not recursive); two files with one stem are an error."""
    if not directory.is_dir():
        raise FileNotFoundError(f"data=raven: {what} {directory} does not exist or is not a directory")
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix.lower() not in wanted or path.name.startswith("."):
            continue
        rid = path.stem
        problem = _recording_id_problem(rid)
        if problem:
            raise AnnotationError(f"{path}: the file stem {rid!r} cannot be a recording id: {problem}")
        if rid in found:
            raise AnnotationError(f"{path}: two recordings named {rid!r} ({found[rid].name} and {path.name}); "
                                  "keep one")
        found[rid] = path
    return found


def _table_files(directory: Path, pattern: str) -> list[Path]:
    """Selection tables of `directory` (file names matching `pattern`, case-insensitive), sorted."""
    if not directory.is_dir():
        raise FileNotFoundError(f"data=raven: data.tables {directory} does not exist or is not a directory")
    pattern = pattern.lower()
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and fnmatch.fnmatch(p.name.lower(), pattern))


def _owner_of_table(table: Path, ids) -> str | None:
    """The recording a table is named after: the longest id R with the name starting with ``R.``.

    Only the name's prefixes ending before a '.' can be ids, so this looks up those few (a set or dict
    ``ids`` keeps it linear in the number of tables, not tables x recordings)."""
    parts = table.name.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in ids:
            return prefix
    return None


def _duration_setting(value) -> float | None:
    """``data.duration_s``: a number of seconds, or ``auto`` (None: recordings of any length)."""
    return None if is_auto_length(value) else float(value)


def _check_audio(rec: _Recording, source: RavenSource) -> None:
    """Length and rate as the audio cache will demand them, failing here, naming the user's file.

    With a fixed ``data.duration_s`` every recording must have that length: a shorter file would fail
    the cache build and a longer one would silently lose its end (and the boxes there).
    ``data.duration_s=auto`` (``source.duration_s`` None) takes recordings of any length.
    """
    try:
        info = sf.info(str(rec.path))
    except Exception as exc:  # libsndfile raises several types for corrupt/unsupported files
        raise AnnotationError(f"{rec.path}: cannot read audio ({type(exc).__name__}: {exc})") from exc
    rec.seconds = info.frames / info.samplerate
    rec.native_rate = int(info.samplerate)
    if source.duration_s is not None and abs(rec.seconds - source.duration_s) > source.duration_tolerance_s:
        raise AnnotationError(
            f"{rec.path}: {rec.seconds:.3f} s long, but data.duration_s={source.duration_s:g}; set "
            "data.duration_s to the recordings' length, or data.duration_s=auto for recordings of any length")
    if info.samplerate != source.native_sample_rate and not source.allow_other_rates:
        raise AnnotationError(
            f"{rec.path}: sample rate {info.samplerate} Hz, but data.native_sample_rate="
            f"{source.native_sample_rate}; set data.native_sample_rate={info.samplerate} (all recordings "
            "must share it) or audio.allow_other_rates=true to resample")


def _discover(source: RavenSource) -> tuple[dict[str, _Recording], list[Path]]:
    """The recordings (with their split and tables) and every selection table found."""
    train_audio = _audio_files(source.root, source.audio_extensions, "data.root")
    test_audio = _audio_files(source.test_dir, source.audio_extensions, "data.test_dir") if source.test_dir else {}
    both = sorted(set(train_audio) & set(test_audio))
    if both:
        raise AnnotationError(f"{test_audio[both[0]]}: recording {both[0]!r} is both in data.root "
                              f"{source.root} and in data.test_dir {source.test_dir}; a recording is train or test")
    table_dir = source.tables or source.root
    tables = _table_files(table_dir, source.table_glob)
    recordings = {rid: _Recording(rid, path, "train") for rid, path in train_audio.items()}
    recordings.update({rid: _Recording(rid, path, "test") for rid, path in test_audio.items()})
    for table in tables:
        owner = _owner_of_table(table, recordings)
        if owner is not None:
            recordings[owner].tables.append(table)
    if source.test_dir is None:
        for rec in recordings.values():
            if not rec.tables:
                rec.split = "test"
    return recordings, tables


def _read_boxes(source: RavenSource, recordings: dict[str, _Recording], tables: list[Path]) -> pd.DataFrame:
    """Every TP/FP selection of the training tables: recording_id, label, songtype_id, t/f bounds,
    is_tp, and the table/line it came from."""
    required = tuple(c for c in (source.label_column, source.validation_column, source.songtype_column) if c)
    frames = []
    for table in tables:
        owner = _owner_of_table(table, recordings)
        if owner is not None and recordings[owner].split == "test" and source.test_dir is not None:
            continue                                    # a test recording's table: not training data
        # the recordings' lengths and rates are known (_check_audio, first), so a table is checked against
        # its recording's end and Nyquist at the table's own lines (a multi-file table without an owner,
        # under data.duration_s=auto, is checked per recording when the converted root is loaded)
        rate = recordings[owner].native_rate if owner else source.native_sample_rate
        length = recordings[owner].seconds if owner and source.duration_s is None else source.duration_s
        rows = read_selection_table(table, required=required, duration_s=length, native_sample_rate=rate)
        if rows.empty:
            continue
        rid = np.where(rows["file"] != "", rows["file"], owner or "")
        if (rid == "").any():
            pos = np.flatnonzero(rid == "")
            raise AnnotationError(f"{table}: no recording for this table: its name starts with no recording id "
                                  f"of {source.root} followed by '.' (expected <recording_id>.<...>.txt), and "
                                  f"line {int(rows['line'].iloc[pos[0]])} has no Begin File")
        unknown = ~pd.Series(rid).isin(list(recordings)).to_numpy()
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise AnnotationError(f"{table}: line {int(rows['line'].iloc[i])}, column 'Begin File': no recording "
                                  f"{rid[i]!r} in {source.root}" + (f" or {source.test_dir}" if source.test_dir else ""))
        rows["recording_id"] = rid
        rows["table"] = str(table)
        frames.append(rows)
    if not frames:
        raise AnnotationError(f"data=raven: no selections in any table matching {source.table_glob!r} in "
                              f"{source.tables or source.root}")
    return pd.concat(frames, ignore_index=True)


def _fail_at(rows: pd.DataFrame, mask: np.ndarray, column: str, problem: str) -> None:
    """_fail for rows gathered from several tables: the first bad row's table, with its lines there."""
    first = int(np.flatnonzero(mask)[0])
    table = rows["table"].iloc[first]
    same = mask & (rows["table"] == table).to_numpy()
    positions = (rows["line"].to_numpy()[same] - 2).tolist()           # _fail counts lines from position 0
    _fail(Path(table), positions, column, problem, rows[column].to_numpy()[same].tolist())


def _parse_integers_at_lines(path: Path, lines: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
    """``_parse_numbers(integer=True)`` of values taken from the given file lines of one table.

    The rows left after dropping view duplicates are not every line of the file, so the values are put
    back at their line positions (other positions hold a valid filler) for the error to name the line.
    """
    column = pd.Series(["0"] * (int(lines.max()) - 1), dtype=object)
    column.iloc[lines - 2] = [str(v) for v in values]
    return _parse_numbers(path, column.astype(str), name, integer=True).to_numpy()[lines - 2]


def _label_boxes(source: RavenSource, rows: pd.DataFrame, recordings: dict[str, _Recording]) -> tuple[pd.DataFrame, list[str]]:
    """Species ids, TP/FP, song types and the per-recording time/frequency checks; returns the Kaggle
    box columns + is_tp + table/line, and the species labels (index = species_id)."""
    split = rows["recording_id"].map(lambda r: recordings[r].split).to_numpy()
    if (split == "test").any():
        column = next((c for c in _FILE_COLUMNS if c in rows.columns), "recording_id")
        _fail_at(rows, split == "test", column, f"selection of a test recording (in data.test_dir "
                 f"{source.test_dir}); test recordings' tables are not training data")
    if source.validation_column:
        value = rows[source.validation_column].astype(str).str.strip().to_numpy()
        known = set(source.tp_values) | set(source.fp_values) | set(source.skip_values)
        bad = ~np.isin(value, list(known))
        if bad.any():
            _fail_at(rows, bad, source.validation_column,
                     f"not one of data.tp_values {list(source.tp_values)}, data.fp_values "
                     f"{list(source.fp_values)} or data.skip_values {list(source.skip_values)}")
        keep = ~np.isin(value, list(source.skip_values))
        rows = rows.loc[keep].reset_index(drop=True)
        is_tp = np.isin(value[keep], list(source.tp_values))
    else:
        is_tp = np.ones(len(rows), dtype=bool)
    labels = rows[source.label_column].astype(str).str.strip()
    empty = (labels == "").to_numpy()
    if empty.any():
        _fail_at(rows, empty, source.label_column, "empty species label")
    species = list(source.species) if source.species is not None else sorted(set(labels))
    unknown = ~labels.isin(species).to_numpy()
    if unknown.any():
        _fail_at(rows, unknown, source.label_column, f"unknown species (data.species: {species})")
    if source.songtype_column:
        songtype = np.empty(len(rows), dtype=np.int64)
        for table, group in rows.groupby("table", sort=False):
            songtype[group.index.to_numpy()] = _parse_integers_at_lines(
                Path(table), group["line"].to_numpy(), group[source.songtype_column].to_numpy(),
                source.songtype_column)
    else:
        songtype = np.ones(len(rows), dtype=np.int64)
    boxes = pd.DataFrame({
        "recording_id": rows["recording_id"].astype(str).to_numpy(),
        "species_id": labels.map({s: i for i, s in enumerate(species)}).to_numpy(dtype=np.int64),
        "songtype_id": songtype,
        "t_min": rows["t_min"].to_numpy(dtype=np.float64),
        "f_min": rows["f_min"].to_numpy(dtype=np.float64),
        "t_max": rows["t_max"].to_numpy(dtype=np.float64),
        "f_max": rows["f_max"].to_numpy(dtype=np.float64),
        "is_tp": is_tp,
        "table": rows["table"].to_numpy(),
        "line": rows["line"].to_numpy(dtype=np.int64),
    })
    return boxes, species


def _fingerprint(source: RavenSource, recordings: dict[str, _Recording], tables: list[Path]) -> dict:
    """What the converted root was made from: the settings, each table's content hash and each audio
    file's size. A later run compares it, so an edited table never trains against a stale conversion."""
    return {
        "settings": source.settings(),
        "tables": {str(t): hashlib.sha256(t.read_bytes()).hexdigest() for t in tables},
        "audio": {str(r.path): r.path.stat().st_size for r in sorted(recordings.values(), key=lambda r: r.recording_id)},
    }


def _fingerprint_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two fingerprints (settings keys, files added/removed/changed)."""
    diffs = [f"data.{k}: {old.get('settings', {}).get(k)!r} -> {v!r}"
             for k, v in new["settings"].items() if old.get("settings", {}).get(k) != v]
    for kind in ("tables", "audio"):
        before, after = old.get(kind, {}), new[kind]
        for what, names in (("added", sorted(set(after) - set(before))), ("removed", sorted(set(before) - set(after))),
                            ("changed", sorted(n for n in set(after) & set(before) if after[n] != before[n]))):
            if names:
                diffs.append(f"{kind} {what}: {names[:3]}" + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
    return diffs


def _place_audio(src: Path, dst: Path) -> None:
    """``dst`` (``<id>.flac``) for the audio file ``src``: a symlink to a FLAC (no copy of the data),
    a lossless FLAC transcode of anything else (the Kaggle layout and the audio cache read ``*.flac``)."""
    if src.suffix.lower() == ".flac":
        try:
            os.symlink(src.resolve(), dst)
        except OSError:                      # file systems without symlinks
            shutil.copy2(src, dst)
        return
    data, rate = sf.read(str(src), dtype="float32", always_2d=True)
    subtype = "PCM_16" if sf.info(str(src)).subtype in ("PCM_16", "PCM_S8", "PCM_U8") else "PCM_24"
    sf.write(str(dst), data, rate, format="FLAC", subtype=subtype)


def convert_raven_root(source: RavenSource, dest: str | os.PathLike) -> Path:
    """Write the Kaggle-layout data root ``dest`` from the recordings and selection tables of ``source``.

    Why a conversion and not a second reader: every stage, the folds, the label grids, the audio cache and
    the submission read the Kaggle layout (``annotations.DataRoot``), so one conversion makes all of them
    work on Raven data unchanged. ``dest`` holds ``train/``, ``test/`` (``<id>.flac``: symlinks to FLAC
    sources, lossless transcodes of WAV), ``train_tp.csv``, ``train_fp.csv``, ``sample_submission.csv``
    (columns ``s0..s{n-1}``), ``species.csv`` (``species_id,label``: the meaning of column ``s<k>``),
    ``box_sources.csv`` (the table and line of every box) and ``manifest.json`` (the fingerprint of the
    inputs). It is built in a sibling temporary folder, read back through ``load_boxes`` (the checks every
    stage will apply), and renamed into place: a killed conversion leaves no half root.

    Every problem is an ``AnnotationError`` naming the user's file (table: line and column; recording:
    its length or rate); see ``RavenSource`` for how tables, species, TP/FP and the test set are found.
    """
    from .annotations import load_boxes            # the Kaggle-layout reader, to verify the result

    dest = Path(dest).expanduser().absolute()
    recordings, tables = _discover(source)
    for rec in recordings.values():
        _check_audio(rec, source)
    rows = _read_boxes(source, recordings, tables)
    if source.test_dir is None:                     # a recording named by a Begin File row is labelled
        for rid in set(rows["recording_id"]):
            recordings[rid].split = "train"
    boxes, species = _label_boxes(source, rows, recordings)
    train = sorted(r for r, rec in recordings.items() if rec.split == "train")
    test = sorted(r for r, rec in recordings.items() if rec.split == "test")
    if not test:
        raise AnnotationError(f"data=raven: no test recordings: every recording of {source.root} has a "
                              "selection table; set data.test_dir=PATH (the recordings to predict) or keep "
                              "some recordings of data.root without a table")
    fingerprint = _fingerprint(source, recordings, tables)

    try:
        with atomic_dir(dest) as tmp:
            for split, ids in (("train", train), ("test", test)):
                (tmp / split).mkdir(parents=True)
                for rid in ids:
                    _place_audio(recordings[rid].path, tmp / split / f"{rid}.flac")
            columns = list(ANNOTATION_COLUMNS)
            write_csv(tmp / "train_tp.csv", boxes.loc[boxes.is_tp, columns], float_format=None)
            write_csv(tmp / "train_fp.csv", boxes.loc[~boxes.is_tp, columns], float_format=None)
            submission = pd.DataFrame(0.0, index=range(len(test)),
                                      columns=[f"s{k}" for k in range(len(species))])
            submission.insert(0, "recording_id", test)
            write_csv(tmp / "sample_submission.csv", submission)
            write_csv(tmp / SPECIES_CSV, pd.DataFrame({"species_id": range(len(species)), "label": species}))
            ordered = pd.concat([boxes.loc[boxes.is_tp], boxes.loc[~boxes.is_tp]])
            sources = ordered.assign(csv=np.where(ordered.is_tp, "train_tp.csv", "train_fp.csv"))
            write_csv(tmp / SOURCES_CSV, sources[["csv", "recording_id", "species_id", "t_min", "table", "line"]],
                      float_format=None)
            native = max([source.native_sample_rate] + [r.native_rate for r in recordings.values()])
            lengths = {rid: recordings[rid].seconds for rid in train} if source.duration_s is None else None
            load_boxes(DataRoot(tmp), duration_s=lengths or source.duration_s, native_sample_rate=native)
            counts = {"train_recordings": len(train), "test_recordings": len(test),
                      "tp_boxes": int(boxes.is_tp.sum()), "fp_boxes": int((~boxes.is_tp).sum()),
                      "species": len(species)}
            write_json(tmp / MANIFEST_NAME, {"format_version": FORMAT_VERSION, "inputs": fingerprint,
                                             "counts": counts, "species": species})
    except OSError:
        if (dest / MANIFEST_NAME).is_file():        # another process converted it meanwhile
            return ensure_raven_root(source, dest)
        raise
    print(f"data=raven: converted {source.root} -> {dest}: {counts['train_recordings']} train recordings "
          f"({counts['tp_boxes']} TP / {counts['fp_boxes']} FP boxes, {len(species)} species), "
          f"{counts['test_recordings']} test recordings", flush=True)
    return dest


def ensure_raven_root(source: RavenSource, dest: str | os.PathLike) -> Path:
    """``dest``, converting ``source`` into it first unless it already holds this very conversion.

    Converted once and reused, so the class ids (submission columns) stay those the workspace's
    checkpoints were trained with. A root converted from other inputs (a table edited, a recording added,
    another ``data.*`` setting) is an error listing the differences: retraining on new labels against an
    old fold split and class list is the failure this guards against.
    """
    dest = Path(dest).expanduser().absolute()
    manifest = dest / MANIFEST_NAME
    if not manifest.is_file():
        if dest.exists() and any(dest.iterdir()):
            raise FileExistsError(f"data=raven: {dest} exists and is not a converted Raven root (no {MANIFEST_NAME}); "
                                  "set data.converted to another folder")
        return convert_raven_root(source, dest)
    recordings, tables = _discover(source)
    old = json.loads(manifest.read_text()).get("inputs", {})
    diffs = _fingerprint_diff(old, _fingerprint(source, recordings, tables))
    if diffs:
        raise ValueError(f"data=raven: {dest} was converted from other inputs (" + "; ".join(diffs) +
                         "); delete it (and use a fresh workspace: folds and classes change) or set "
                         "data.converted to another folder")
    log.info("data=raven: reusing %s (converted from %s)", dest, source.root)
    return dest


def species_labels(root: str | os.PathLike) -> list[str]:
    """The species labels of a converted root, in submission column order (``s0``, ``s1``, ...)."""
    path = Path(root) / SPECIES_CSV
    frame = _read_csv_as_strings(path)
    return frame.sort_values("species_id", key=lambda c: c.astype(int))["label"].tolist()
