"""Validation of the Kaggle layout and the TP/FP box CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from rfcx_lightning.data.annotations import (
    ANNOTATION_COLUMNS,
    AnnotationError,
    ClassScheme,
    DataRoot,
    check_recording_id,
    load_annotations,
    load_boxes,
)

HEADER = ",".join(ANNOTATION_COLUMNS)
SPECIES = list(range(24))


def _fake_flac(path: Path) -> None:
    """A tiny FLAC file; annotation checks only look for the file, not its length."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(480, 0.1, dtype=np.float32), 48000, format="FLAC")


def _write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture()
def audio_dir(tmp_path: Path) -> Path:
    for rid in ("003b04435", "000316000", "00ad36516"):
        _fake_flac(tmp_path / "train" / f"{rid}.flac")
    return tmp_path / "train"


def _load(path: Path, audio_dir: Path, **kw) -> pd.DataFrame:
    return load_annotations(path, is_tp=True, audio_dir=audio_dir, species_ids=SPECIES, **kw)


GOOD = "003b04435,3,1,10.0,2000.0,12.5,4000.0"


def test_valid_rows_and_string_ids(tmp_path, audio_dir):
    path = _write_csv(tmp_path / "train_tp.csv", [GOOD, "000316000,13,4,0.0,100.0,1.0,200.0"])
    frame = _load(path, audio_dir)
    assert list(frame.columns) == [*ANNOTATION_COLUMNS, "is_tp"]
    assert frame["recording_id"].tolist() == ["003b04435", "000316000"]  # leading zeros kept
    assert frame["species_id"].tolist() == [3, 13]
    assert frame["songtype_id"].dtype == np.int64
    assert frame["t_max"].tolist() == [12.5, 1.0]
    assert frame["is_tp"].all()


def test_header_only_is_valid(tmp_path, audio_dir):
    frame = _load(_write_csv(tmp_path / "train_fp.csv", []), audio_dir)
    assert len(frame) == 0
    assert list(frame.columns) == [*ANNOTATION_COLUMNS, "is_tp"]


@pytest.mark.parametrize(
    "row, line_field",
    [
        ("003b04435,3,1,abc,2000,12.5,4000", "t_min"),  # non-numeric
        ("003b04435,3,1,,2000,12.5,4000", "t_min"),  # empty
        ("003b04435,x,1,10,2000,12.5,4000", "species_id"),
        ("003b04435,3.5,1,10,2000,12.5,4000", "species_id"),  # not an integer
        ("003b04435,3,1,12.5,2000,10.0,4000", "t_min"),  # t_min >= t_max
        ("003b04435,3,1,-1.0,2000,12.5,4000", "t_min"),  # before start
        ("003b04435,3,1,50.0,2000,61.0,4000", "t_max"),  # after end
        ("003b04435,3,1,10,4000,12.5,2000", "f_min"),  # f_min >= f_max
        ("003b04435,3,1,10,2000,12.5,25000", "f_max"),  # above Nyquist of 48 kHz
        ("003b04435,3,1,10,-5,12.5,4000", "f_min"),  # negative frequency
        ("003b04435,99,1,10,2000,12.5,4000", "species_id"),  # unknown species
        ("316000,3,1,10,2000,12.5,4000", "recording_id"),  # lost leading zeros: no audio
        ("../x,3,1,10,2000,12.5,4000", "recording_id"),
        ("a/b,3,1,10,2000,12.5,4000", "recording_id"),
        ("a\\b,3,1,10,2000,12.5,4000", "recording_id"),
        (".hidden,3,1,10,2000,12.5,4000", "recording_id"),
        (",3,1,10,2000,12.5,4000", "recording_id"),
    ],
)
def test_row_errors_name_file_line_and_field(tmp_path, audio_dir, row, line_field):
    path = _write_csv(tmp_path / "train_tp.csv", [GOOD, "00ad36516,3,1,20.0,2000,22.5,4000", row])
    with pytest.raises(AnnotationError) as info:
        _load(path, audio_dir)
    message = str(info.value)
    assert "train_tp.csv" in message
    assert "line 4" in message  # header is line 1, the bad row is the third data row
    assert line_field in message


def test_missing_columns_listed(tmp_path, audio_dir):
    path = _write_csv(tmp_path / "train_fp.csv", ["003b04435,3,10,2000,12.5"],
                      header="recording_id,species_id,t_min,f_min,t_max")
    with pytest.raises(AnnotationError) as info:
        _load(path, audio_dir)
    message = str(info.value)
    assert "train_fp.csv" in message and "line 1" in message
    assert "songtype_id" in message and "f_max" in message


def test_tiny_time_excursions_are_clipped(tmp_path, audio_dir):
    path = _write_csv(tmp_path / "train_tp.csv", ["003b04435,3,1,-0.01,2000,60.02,4000"])
    frame = _load(path, audio_dir)
    assert frame.loc[0, "t_min"] == 0.0 and frame.loc[0, "t_max"] == 60.0


def test_duplicates_dropped_with_warning(tmp_path, audio_dir):
    path = _write_csv(tmp_path / "train_tp.csv", [GOOD, "000316000,13,4,0.0,100.0,1.0,200.0", GOOD])
    with pytest.warns(UserWarning) as record:
        frame = _load(path, audio_dir)
    assert len(frame) == 2
    message = str(record[0].message)
    assert "train_tp.csv" in message and "line 4" in message and "line 2" in message


def test_audio_check_can_be_skipped(tmp_path):
    path = _write_csv(tmp_path / "train_tp.csv", ["ffffffff0,3,1,1,2,3,4"])
    frame = load_annotations(path, is_tp=False, audio_dir=None, species_ids=SPECIES)
    assert frame["recording_id"].tolist() == ["ffffffff0"] and not frame["is_tp"].any()


def test_check_recording_id():
    assert check_recording_id("000316000") == "000316000"
    for bad in ("", "../x", "a/b", "a\\b", ".x", "x..y"):
        with pytest.raises(ValueError):
            check_recording_id(bad)


def _make_root(tmp_path: Path, with_submission: bool = True) -> DataRoot:
    root = tmp_path / "rfcx"
    for rid in ("003b04435", "000316000", "00ad36516", "0a1b2c3d4"):
        _fake_flac(root / "train" / f"{rid}.flac")
    for rid in ("ffff00001", "000000002"):
        _fake_flac(root / "test" / f"{rid}.flac")
    _write_csv(root / "train_tp.csv", ["003b04435,3,1,10,2000,12.5,4000", "000316000,1,1,1,500,2,900",
                                       "00ad36516,1,4,5,3000,6,5000"])
    _write_csv(root / "train_fp.csv", ["003b04435,1,1,30,500,31,900", "0a1b2c3d4,3,1,1,2000,2,4000"])
    if with_submission:
        lines = ["recording_id," + ",".join(f"s{i}" for i in range(5)), "ffff00001,0,0,0,0,0",
                 "000000002,0,0,0,0,0"]
        (root / "sample_submission.csv").write_text("\n".join(lines) + "\n")
    return DataRoot(root)


def test_data_root_ids_and_species(tmp_path):
    dr = _make_root(tmp_path)
    dr.check(require_test=True)
    assert dr.train_ids() == sorted(["003b04435", "000316000", "00ad36516", "0a1b2c3d4"])
    assert dr.test_ids() == ["ffff00001", "000000002"]  # submission order, zeros kept
    assert dr.species_ids() == [0, 1, 2, 3, 4]
    assert dr.audio_path("train", "000316000") == dr.root / "train" / "000316000.flac"
    with pytest.raises(ValueError):
        dr.audio_path("valid", "000316000")


def test_data_root_without_submission(tmp_path):
    dr = _make_root(tmp_path, with_submission=False)
    assert dr.test_ids() == ["000000002", "ffff00001"]
    assert dr.species_ids() == [1, 3]


def test_check_names_missing_parts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        DataRoot(tmp_path / "empty").check(require_test=True)
    message = str(info.value)
    for part in ("train", "train_tp.csv", "train_fp.csv", "test", "sample_submission.csv"):
        assert part in message


def test_load_boxes_species_scheme(tmp_path):
    boxes, scheme = load_boxes(_make_root(tmp_path))
    assert len(boxes) == 5
    assert boxes["is_tp"].tolist() == [True, True, True, False, False]
    assert scheme.n_classes == 5 and scheme.class_names[3] == "s3"
    assert boxes["class_index"].tolist() == [3, 1, 1, 1, 3]
    np.testing.assert_array_equal(scheme.species_of_class, np.arange(5))


def test_load_boxes_songtype_scheme(tmp_path):
    boxes, scheme = load_boxes(_make_root(tmp_path), scheme_by_songtype=True)
    # species 1 has songtypes 1 and 4; species without boxes get a placeholder songtype-1 class
    assert scheme.class_names == ["s0_t1", "s1_t1", "s1_t4", "s2_t1", "s3_t1", "s4_t1"]
    assert scheme.index_of(1, 4) == 2
    assert boxes["class_index"].tolist() == [4, 1, 2, 1, 4]
    np.testing.assert_array_equal(scheme.species_of_class, [0, 1, 1, 2, 3, 4])
    scores = np.array([[0.1, 0.2, 0.9, 0.3, 0.4, 0.5]])
    np.testing.assert_allclose(scheme.to_species_scores(scores), [[0.1, 0.9, 0.3, 0.4, 0.5]])
    with pytest.raises(KeyError):
        scheme.index_of(0, 4)


def test_class_scheme_validation():
    with pytest.raises(ValueError):
        ClassScheme(species=(0, 1), by_songtype=True, pairs=((0, 1),))  # species 1 uncovered
    with pytest.raises(ValueError):
        ClassScheme(species=(0, 0))
    scheme = ClassScheme(species=(0, 1))
    assert scheme.index_of(1) == 1 and scheme == ClassScheme(species=(0, 1))
    hash(scheme)
