"""Raven selection tables: writer, reader (errors name file/line/column, view duplicates), and
``data=raven``: a folder of recordings + tables converted once to the Kaggle layout the library trains on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from rfcx_lightning.data.annotations import AnnotationError, DataRoot, load_boxes
from rfcx_lightning.data.raven import (RAVEN_COLUMNS, RavenSource, convert_raven_root, ensure_raven_root,
                                       read_selection_table, species_labels, write_selection_table)
from rfcx_lightning.workspace import is_temporary

from .conftest import run_cli_subprocess

SR = 16000          # small files, fast tests; the rate is a setting (data.native_sample_rate)
SECONDS = 60.0
HEADER = "\t".join(RAVEN_COLUMNS[:7])


def detections(n: int = 3, seed: int = 0, species=("Hylidae sp", "owl", "Hylidae sp")) -> pd.DataFrame:
    """What the detection stage hands write_selection_table: boxes, a species label and a score."""
    rng = np.random.default_rng(seed)
    begin = np.sort(rng.uniform(0, 50, n)).round(3)
    low = rng.uniform(100, 3000, n).round(1)
    return pd.DataFrame({"begin_s": begin, "end_s": begin + rng.uniform(0.5, 5, n), "low_hz": low,
                         "high_hz": low + rng.uniform(200, 4000, n), "species": list(species)[:n],
                         "score": rng.random(n)})


def write_recording(path: Path, seconds: float = SECONDS, sr: int = SR, seed: int = 0) -> Path:
    """A sine tone in noise (never silent: the audio cache rejects all-zero files)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    audio = 0.3 * np.sin(2 * np.pi * (500 + 100 * seed) * t) + 0.05 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.astype(np.float32), sr, subtype="PCM_16")
    return path


def write_raw_table(path: Path, lines: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------
# writer / reader
# ---------------------------------------------------------------------------------------------------

def test_written_table_is_raven_format_and_reads_back_the_same_boxes(tmp_path):
    table = detections()
    path = write_selection_table(tmp_path / "rec.Table.1.selections.txt", table)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == list(RAVEN_COLUMNS)
    assert [line.split("\t")[:3] for line in lines[1:]] == [["1", "Spectrogram 1", "1"], ["2", "Spectrogram 1", "1"],
                                                            ["3", "Spectrogram 1", "1"]]
    back = read_selection_table(path)
    assert back["selection"].tolist() == [1, 2, 3] and back["line"].tolist() == [2, 3, 4]
    for ours, theirs in (("begin_s", "t_min"), ("end_s", "t_max"), ("low_hz", "f_min"), ("high_hz", "f_max")):
        np.testing.assert_array_equal(back[theirs].to_numpy(), table[ours].to_numpy())   # exact, not rounded
    assert back["Species"].tolist() == table["species"].tolist()
    np.testing.assert_array_equal(back["Score"].astype(float).to_numpy(), table["score"].to_numpy())
    # species names are written as they are (Raven never quotes), quotes and all
    quoted = table.assign(species=['say "hi"', "it's", "A, B"])
    assert read_selection_table(write_selection_table(tmp_path / "q.txt", quoted))["Species"].tolist() == \
        ['say "hi"', "it's", "A, B"]
    (tmp_path / "q.txt").unlink()
    # no temporary file left beside it; an empty table is a header-only table that reads as no selections
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    empty = write_selection_table(tmp_path / "empty.txt", table.iloc[:0])
    assert empty.read_text().splitlines() == ["\t".join(RAVEN_COLUMNS)] and read_selection_table(empty).empty


def test_writer_refuses_tables_raven_could_not_read(tmp_path):
    with pytest.raises(ValueError, match=r"out.txt: .*missing column\(s\) \['score'\]"):
        write_selection_table(tmp_path / "out.txt", detections().drop(columns="score"))
    bad = detections()
    bad.loc[1, "end_s"] = bad.loc[1, "begin_s"]
    with pytest.raises(ValueError, match=r"out.txt: .*row 1, column 'begin_s': begin_s must be smaller than end_s"):
        write_selection_table(tmp_path / "out.txt", bad)
    bad = detections()
    bad.loc[2, "species"] = "a\tb"
    with pytest.raises(ValueError, match=r"row 2, column 'species'"):
        write_selection_table(tmp_path / "out.txt", bad)
    assert not (tmp_path / "out.txt").exists()


def test_reader_keeps_one_row_per_selection_preferring_the_spectrogram_view(tmp_path):
    # Raven Pro's own export: a Waveform row and a Spectrogram row per selection, extra columns
    path = write_raw_table(tmp_path / "rec.selections.txt", [
        "1\tWaveform 1\t1\t1.5\t2.5\t0\t8000\t\tA",
        "1\tSpectrogram 1\t1\t1.5\t2.5\t300\t900\t12.5\tA",
        "2\tSpectrogram 1\t1\t4.0\t6.0\t1000\t2000\t3.0\tB",
        "2\tWaveform 1\t1\t4.0\t6.0\t0\t8000\t\tB",
        "3\tWaveform 1\t1\t7.0\t8.0\t0\t8000\t\tC",
    ], header=HEADER + "\tDelta Time (s)\tSpecies")
    rows = read_selection_table(path)
    assert rows["selection"].tolist() == [1, 2, 3]
    assert rows["line"].tolist() == [3, 4, 6]
    assert rows["f_min"].tolist() == [300.0, 1000.0, 0.0] and rows["Species"].tolist() == ["A", "B", "C"]
    assert rows["Delta Time (s)"].tolist() == ["12.5", "3.0", ""]


def test_reader_errors_name_file_line_and_column(tmp_path):
    def fails(lines, pattern, header=HEADER, **kwargs):
        path = write_raw_table(tmp_path / "t.selections.txt", lines, header=header)
        with pytest.raises(AnnotationError, match=pattern):
            read_selection_table(path, **kwargs)

    ok = "1\tSpectrogram 1\t1\t1.0\t2.0\t100\t900"
    fails([ok, "2\tSpectrogram 1\t1\t1.0\tabc\t100\t900"],
          r"t.selections.txt: line 3, field 'End Time \(s\)': not a finite number \(value 'abc'\)")
    fails([ok, ok.replace("1\t", "2\t", 1), "3\tSpectrogram 1\t1\t5.0\t4.0\t100\t900"],
          r"t.selections.txt: line 4, field 'Begin Time \(s\)': Begin Time \(s\) must be smaller than End Time")
    fails(["1\tSpectrogram 1\t1\t1.0\t2.0\t900\t100"],
          r"line 2, field 'Low Freq \(Hz\)': Low Freq \(Hz\) must be smaller than High Freq")
    fails(["1\tSpectrogram 1\t1\t1.0\t2.0\t-5\t100"], r"line 2, field 'Low Freq \(Hz\)': negative frequency")
    fails([ok, "2\tSpectrogram 1\t1\t1.0\t2.0\t100\t9000"],
          r"line 3, field 'High Freq \(Hz\)': above the Nyquist frequency 8000 Hz", native_sample_rate=SR)
    fails([ok, "2\tSpectrogram 1\t1\t59.0\t61.0\t100\t900"],
          r"line 3, field 'End Time \(s\)': after the end of the 60.0 s recording", duration_s=60.0)
    fails(["0\tSpectrogram 1\t1\t1.0\t2.0\t100\t900"], r"line 2, field 'Selection': must be a positive integer")
    fails(["1.5\tSpectrogram 1\t1\t1.0\t2.0\t100\t900"], r"line 2, field 'Selection': not an integer")
    # two different selections sharing a number are not two views of one selection
    fails([ok, "1\tWaveform 1\t1\t3.0\t4.0\t100\t900"],
          r"line 3, field 'Begin Time \(s\)': Selection 1 appears on line 2 with other times")
    fails([ok], r"t.selections.txt: line 1 \(header\), column\(s\) \['Species'\]: missing", required=("Species",))
    path = tmp_path / "commas.txt"
    path.write_text("Selection,Begin Time (s),End Time (s)\n1,2,3\n")
    with pytest.raises(AnnotationError, match=r"commas.txt: line 1 \(header\).*is it tab-separated"):
        read_selection_table(path)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes((HEADER + "\tSpecies\n" + ok + "\tGrünspecht\n").encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"latin1.txt: not UTF-8 text"):
        read_selection_table(latin)
    with pytest.raises(AnnotationError, match=r"nowhere.txt: file not found"):
        read_selection_table(tmp_path / "nowhere.txt")


def test_multi_file_tables_use_the_file_offset(tmp_path):
    # BirdNET-Analyzer / Raven file lists: Begin Time counts from the first file, File Offset within the row's file
    path = write_raw_table(tmp_path / "combined.selection.table.txt", [
        "1\tSpectrogram 1\t1\t61.0\t63.5\t100\t900\tC:\\data\\rec2.wav\t1.0",
        "2\tSpectrogram 1\t1\t3.0\t4.0\t100\t900\t/data/rec1.flac\t3.0",
    ], header=HEADER + "\tBegin Path\tFile Offset (s)")
    rows = read_selection_table(path, duration_s=60.0)
    assert rows["file"].tolist() == ["rec2", "rec1"]
    assert rows["t_min"].tolist() == [1.0, 3.0] and rows["t_max"].tolist() == [3.5, 4.0]


# ---------------------------------------------------------------------------------------------------
# data=raven: conversion to the Kaggle layout
# ---------------------------------------------------------------------------------------------------

def raven_folder(root: Path, n_train: int = 3, n_test: int = 1, validation: bool = False) -> dict[str, pd.DataFrame]:
    """Recordings rec0.. (FLAC, and one WAV) with tables written like the detection stage writes them;
    the last n_test recordings have no table. Returns the table of each labelled recording."""
    tables = {}
    for k in range(n_train + n_test):
        ext = ".wav" if k == 1 else ".flac"
        write_recording(root / f"rec{k}{ext}", seed=k)
        if k < n_train:
            table = detections(3, seed=k, species=("frog", "owl", "frog") if k % 2 == 0 else ("owl", "bat", "owl"))
            path = write_selection_table(root / f"rec{k}.Table.1.selections.txt", table)
            if validation:
                text = path.read_text().splitlines()
                marks = ["Validation"] + ["TP", "FP", "TP"][: len(text) - 1]
                path.write_text("\n".join(f"{line}\t{m}" for line, m in zip(text, marks)) + "\n")
            tables[f"rec{k}"] = table
    return tables


def source(root: Path, **kwargs) -> RavenSource:
    return RavenSource(root=root, native_sample_rate=SR, **kwargs)


def test_conversion_builds_the_boxes_of_the_tables(tmp_path):
    tables = raven_folder(tmp_path / "raven")
    dest = convert_raven_root(source(tmp_path / "raven"), tmp_path / "converted")
    assert species_labels(dest) == ["bat", "frog", "owl"]                     # sorted distinct labels
    boxes, scheme = load_boxes(DataRoot(dest), duration_s=SECONDS, native_sample_rate=SR)
    assert scheme.species == (0, 1, 2) and boxes["is_tp"].all()              # no validation column: all TP
    ids = {"bat": 0, "frog": 1, "owl": 2}
    expected = pd.concat([t.assign(recording_id=rid) for rid, t in tables.items()], ignore_index=True)
    got = boxes.sort_values(["recording_id", "t_min"]).reset_index(drop=True)
    expected = expected.sort_values(["recording_id", "begin_s"]).reset_index(drop=True)
    assert got["recording_id"].tolist() == expected["recording_id"].tolist()
    assert got["species_id"].tolist() == expected["species"].map(ids).tolist()
    assert got["songtype_id"].tolist() == [1] * len(got)
    for ours, theirs in (("begin_s", "t_min"), ("end_s", "t_max"), ("low_hz", "f_min"), ("high_hz", "f_max")):
        np.testing.assert_allclose(got[theirs].to_numpy(), expected[ours].to_numpy(), rtol=0, atol=1e-9)
    root = DataRoot(dest)
    assert root.train_ids() == ["rec0", "rec1", "rec2"] and root.test_ids() == ["rec3"]   # no table: test
    assert list(pd.read_csv(root.sample_submission_csv).columns) == ["recording_id", "s0", "s1", "s2"]
    assert (dest / "train" / "rec0.flac").is_symlink()                         # FLAC: linked, not copied
    wav, rate = sf.read(str(dest / "train" / "rec1.flac"))                    # WAV: lossless FLAC transcode
    original, _ = sf.read(str(tmp_path / "raven" / "rec1.wav"))
    assert rate == SR and np.array_equal(wav, original)
    sources = pd.read_csv(dest / "box_sources.csv")
    assert sources["line"].tolist()[:3] == [2, 3, 4] and sources["table"].str.endswith(".selections.txt").all()
    assert json.loads((dest / "manifest.json").read_text())["counts"]["tp_boxes"] == 9
    assert not [p for p in tmp_path.iterdir() if is_temporary(p.name)]


def test_validation_column_species_list_and_test_dir(tmp_path):
    raven_folder(tmp_path / "raven", n_train=3, n_test=0, validation=True)
    write_recording(tmp_path / "test" / "t1.flac", seed=7)
    write_recording(tmp_path / "test" / "t2.flac", seed=8)
    src = source(tmp_path / "raven", validation_column="Validation", test_dir=tmp_path / "test",
                 species=("owl", "frog", "bat", "unseen"))
    dest = convert_raven_root(src, tmp_path / "converted")
    assert species_labels(dest) == ["owl", "frog", "bat", "unseen"]             # the configured order
    tp = pd.read_csv(dest / "train_tp.csv", dtype={"recording_id": str})
    fp = pd.read_csv(dest / "train_fp.csv", dtype={"recording_id": str})
    assert len(tp) == 6 and len(fp) == 3                                      # rows 1 and 3 TP, row 2 FP
    assert sorted(fp["species_id"]) == [0, 0, 2]                              # owl, owl (rec0, rec2), bat (rec1)
    assert DataRoot(dest).test_ids() == ["t1", "t2"]
    assert list(pd.read_csv(dest / "sample_submission.csv").columns)[1:] == ["s0", "s1", "s2", "s3"]


def test_conversion_errors_name_the_file_line_and_column(tmp_path):
    root = tmp_path / "raven"
    raven_folder(root, n_train=2, n_test=1, validation=True)
    table = root / "rec0.Table.1.selections.txt"
    with pytest.raises(AnnotationError, match=r"rec0.Table.1.selections.txt: line 3, field 'Species': unknown "
                                              r"species \(data.species: \['frog', 'bat'\]\)"):
        convert_raven_root(source(root, validation_column="Validation", species=("frog", "bat")), tmp_path / "c")
    with pytest.raises(AnnotationError, match=r"selections.txt: line 1 \(header\), column\(s\) \['Label'\]: missing"):
        convert_raven_root(source(root, label_column="Label"), tmp_path / "c")
    text = table.read_text().replace("\tFP\n", "\t?\n")
    table.write_text(text)
    with pytest.raises(AnnotationError, match=r"rec0.Table.1.selections.txt: line 3, field 'Validation': not one "
                                              r"of data.tp_values \['TP'\]"):
        convert_raven_root(source(root, validation_column="Validation"), tmp_path / "c")
    # skip_values makes the same row unknown instead
    dest = convert_raven_root(source(root, validation_column="Validation", skip_values=("?",)), tmp_path / "c")
    assert len(pd.read_csv(dest / "train_fp.csv")) == 1                       # only rec1's FP row left
    # a box past the end of its recording, at its own line
    write_raw_table(root / "rec1.Table.2.selections.txt", ["1\tSpectrogram 1\t1\t10\t11\t100\t900\tfrog",
                                                           "2\tSpectrogram 1\t1\t59.5\t61.0\t100\t900\tfrog"],
                    header=HEADER + "\tSpecies")
    with pytest.raises(AnnotationError, match=r"rec1.Table.2.selections.txt: line 3, field 'End Time \(s\)': after "
                                              r"the end of the 60.0 s recording"):
        convert_raven_root(source(root), tmp_path / "c2")
    (root / "rec1.Table.2.selections.txt").unlink()
    # a table without its recording
    write_selection_table(root / "lost.Table.1.selections.txt", detections(1))
    with pytest.raises(AnnotationError, match=r"lost.Table.1.selections.txt: no recording for this table"):
        convert_raven_root(source(root), tmp_path / "c2")
    (root / "lost.Table.1.selections.txt").unlink()
    # a recording of another length than data.duration_s
    write_recording(root / "short.flac", seconds=20.0)
    with pytest.raises(AnnotationError, match=r"short.flac: 20.000 s long, but data.duration_s=60; set "
                                              r"data.duration_s to the recordings' length, or data.duration_s=auto"):
        convert_raven_root(source(root), tmp_path / "c2")
    # ... which data.duration_s=auto takes, checking each table against its own recording's end
    write_raw_table(root / "short.Table.1.selections.txt", ["1\tSpectrogram 1\t1\t18.0\t21.0\t100\t900\tfrog"],
                    header=HEADER + "\tSpecies")
    with pytest.raises(AnnotationError, match=r"short.Table.1.selections.txt: line 2, field 'End Time \(s\)': "
                                              r"after the end of the 20.0 s recording"):
        convert_raven_root(source(root, duration_s=None), tmp_path / "c2")
    (root / "short.flac").unlink()
    (root / "short.Table.1.selections.txt").unlink()
    with pytest.raises(AnnotationError, match=r"rec0.flac: sample rate 16000 Hz, but data.native_sample_rate=48000"):
        convert_raven_root(RavenSource(root=root), tmp_path / "c2")
    assert not (tmp_path / "c2").exists()


def test_a_multi_file_table_assigns_rows_to_their_recordings(tmp_path):
    root = tmp_path / "raven"
    for k in range(3):
        write_recording(root / f"rec{k}.flac", seed=k)
    tables = tmp_path / "tables"
    tables.mkdir()
    header = HEADER + "\tBegin Path\tFile Offset (s)\tCommon Name"
    write_raw_table(tables / "BirdNET_CombinedTable.selection.table.txt", [
        f"1\tSpectrogram 1\t1\t2.0\t5.0\t150\t7000\t{root}/rec0.flac\t2.0\tOwl",
        f"2\tSpectrogram 1\t1\t64.0\t67.0\t150\t7000\t{root}/rec1.flac\t4.0\tFrog",
    ], header=header)
    dest = convert_raven_root(source(root, tables=tables, label_column="Common Name"), tmp_path / "c")
    tp = pd.read_csv(dest / "train_tp.csv", dtype={"recording_id": str})
    assert tp[["recording_id", "species_id", "t_min", "t_max"]].values.tolist() == [["rec0", 1, 2.0, 5.0],
                                                                                   ["rec1", 0, 4.0, 7.0]]
    assert DataRoot(dest).test_ids() == ["rec2"]                 # named by no row: the test set
    write_raw_table(tables / "BirdNET_CombinedTable.selection.table.txt", [
        f"1\tSpectrogram 1\t1\t2.0\t5.0\t150\t7000\t{root}/rec0.flac\t2.0\tOwl",
        f"2\tSpectrogram 1\t1\t64.0\t67.0\t150\t7000\t{root}/elsewhere.flac\t4.0\tFrog",
    ], header=header)
    with pytest.raises(AnnotationError, match=r"CombinedTable.selection.table.txt: line 3, column 'Begin File': "
                                              r"no recording 'elsewhere'"):
        convert_raven_root(source(root, tables=tables, label_column="Common Name"), tmp_path / "c2")
    # a recording both in data.root and data.test_dir is refused
    with pytest.raises(AnnotationError, match=r"'rec0' is both in data.root"):
        convert_raven_root(source(root, test_dir=root), tmp_path / "c3")


def test_converted_once_and_a_changed_table_is_refused(tmp_path):
    root = tmp_path / "raven"
    raven_folder(root, n_train=2, n_test=1)
    dest = ensure_raven_root(source(root), tmp_path / "converted")
    stamp = (dest / "manifest.json").stat().st_mtime_ns
    assert ensure_raven_root(source(root), dest) == dest                       # reused, not rewritten
    assert (dest / "manifest.json").stat().st_mtime_ns == stamp
    table = root / "rec0.Table.1.selections.txt"
    table.write_text(table.read_text().replace("frog", "toad"))
    with pytest.raises(ValueError, match=r"converted from other inputs \(tables changed: .*rec0.Table.1"):
        ensure_raven_root(source(root), dest)
    with pytest.raises(ValueError, match=r"data.label_column: 'Species' -> 'Score'"):
        ensure_raven_root(source(root, label_column="Score"), dest)


def test_smoke_bootstrap_on_a_raven_folder(tmp_path):
    """The whole CLI on data=raven: conversion, cache, folds, training, submission with the label columns."""
    root = tmp_path / "raven"
    for k in range(8):
        write_recording(root / f"site{k}.flac", seed=k)
        if k < 6:
            species = ("frog", "owl") if k % 2 == 0 else ("owl", "frog")
            write_selection_table(root / f"site{k}.Table.1.selections.txt", detections(2, seed=k, species=species))
    ws = tmp_path / "ws"
    result = run_cli_subprocess(["stage=bootstrap", "preset=smoke", "data=raven", f"data.root={root}",
                                 f"data.native_sample_rate={SR}", f"workspace={ws}"], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data=raven: converted" in result.stdout
    submission = pd.read_csv(ws / "submission.csv", dtype={"recording_id": str})
    assert list(submission.columns) == ["recording_id", "s0", "s1"]
    assert submission["recording_id"].tolist() == ["site6", "site7"]
    assert species_labels(ws / "raven_data") == ["frog", "owl"]
