"""Tests of the synthetic RFCx soundscapes (rfcx_lightning.data.synthetic): layout, labels, audio,
determinism, statistics, reuse and atomicity. CPU only; one small data set is shared by most tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from rfcx_lightning.data import synthetic
from rfcx_lightning.data.synthetic import api as synthetic_api
from rfcx_lightning.data.synthetic import plan as synthetic_plan
from rfcx_lightning.data.synthetic import render as synthetic_render
from rfcx_lightning.data.synthetic import species as synthetic_species
from rfcx_lightning.data.synthetic import tables as synthetic_tables
from rfcx_lightning.data.priors import RFCX_TEST_PRIOR
from rfcx_lightning.data.synthetic import (
    SyntheticConfig,
    ensure_synthetic,
    generate,
    load_calls,
    load_call_shapes,
    load_confusers,
    load_distractors,
    load_truth,
    plan_dataset,
)

SMALL = SyntheticConfig(n_train=12, n_test=6, seed=3, tp_per_species=2)
ANNOTATION_COLUMNS = ["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max"]
SPECIES_COLUMNS = [f"s{k}" for k in range(24)]


def _tiny(seed: int = 0, **kw) -> SyntheticConfig:
    """A few short recordings: for tests that generate several times."""
    base = dict(n_train=4, n_test=2, seed=seed, duration_s=12.0, tp_per_species=1, fp_per_tp=2.0)
    base.update(kw)
    return SyntheticConfig(**base)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "data", SMALL, workers=1, progress=False)


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"recording_id": str})


def _overlap(a0, a1, b0, b1) -> bool:
    return a0 < b1 and b0 < a1


# ---------------------------------------------------------------------------------------------- layout

def test_layout_and_columns(root):
    for name in ["train_tp.csv", "train_fp.csv"]:
        assert list(_csv(root / name).columns) == ANNOTATION_COLUMNS
    sub = _csv(root / "sample_submission.csv")
    assert list(sub.columns) == ["recording_id"] + SPECIES_COLUMNS
    assert len(sub) == SMALL.n_test and (sub[SPECIES_COLUMNS].to_numpy() == 0).all()
    for split, n in (("train", SMALL.n_train), ("test", SMALL.n_test)):
        truth = load_truth(root, split)
        assert list(truth.columns) == ["recording_id"] + SPECIES_COLUMNS
        assert len(truth) == n
        assert set(np.unique(truth[SPECIES_COLUMNS].to_numpy())) <= {0, 1}
        assert sorted(p.stem for p in (root / split).glob("*.flac")) == truth["recording_id"].tolist()
    assert load_truth(root, "test")["recording_id"].tolist() == sub["recording_id"].tolist()
    calls, conf = load_calls(root), load_confusers(root)
    assert list(calls.columns) == ["split", "recording_id", "species_id", "songtype_id", "t_min", "t_max",
                                   "f_min", "f_max", "snr_db", "label"]
    assert set(calls["label"]) <= {"tp", "none"}
    assert set(conf["label"]) <= {"fp", "none"} and "kind" in conf.columns
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format_version"] == synthetic.FORMAT_VERSION
    assert manifest["config"]["n_train"] == SMALL.n_train
    assert manifest["config"]["tp_per_species"] == SMALL.tp_per_species
    with pytest.raises(ValueError):
        load_truth(root, "valid")


def test_recording_ids_are_strings_with_leading_zeros(root):
    train, test = load_truth(root, "train"), load_truth(root, "test")
    ids = train["recording_id"].tolist() + test["recording_id"].tolist()
    assert len(set(ids)) == len(ids)
    assert all(len(r) == 9 and all(c in "0123456789abcdef" for c in r) for r in ids)
    zero_led = [r for r in ids if r.isdigit() and r.startswith("0")]
    assert zero_led, "some ids must be all digits with leading zeros"
    # Such ids keep their zeros through every CSV the generator writes, and their files exist.
    for rid in zero_led:
        split = "train" if rid in set(train["recording_id"]) else "test"
        assert (root / split / f"{rid}.flac").is_file()
    # Every CSV keeps them when read as str.
    for name in ("train_tp.csv", "train_fp.csv", "sample_submission.csv"):
        assert set(_csv(root / name)["recording_id"]) <= set(ids)


def test_audio_files_are_60s_mono_48k_pcm16(root):
    for split in ("train", "test"):
        files = sorted((root / split).glob("*.flac"))
        assert len(files) == (SMALL.n_train if split == "train" else SMALL.n_test)
        for path in files[:3]:
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.frames) == (48000, 1, 60 * 48000)
            assert info.format == "FLAC" and info.subtype == "PCM_16"
        data, _ = sf.read(str(files[0]), dtype="int16")
        assert data.ndim == 1 and np.abs(data.astype(np.int32)).max() < 32767 and data.std() > 1


def test_boxes_are_valid(root):
    for name in ["train_tp.csv", "train_fp.csv"]:
        b = _csv(root / name)
        assert ((b.t_min >= 0) & (b.t_min < b.t_max) & (b.t_max <= 60.0)).all(), name
        assert ((b.f_min >= 0) & (b.f_min < b.f_max) & (b.f_max <= 24000.0)).all(), name
        assert set(b.recording_id) <= set(load_truth(root, "train").recording_id)
    calls = load_calls(root)
    assert ((calls.t_min >= 0) & (calls.t_min < calls.t_max) & (calls.t_max <= 60.0)).all()
    assert ((calls.f_min > 0) & (calls.f_min < calls.f_max) & (calls.f_max <= 24000.0)).all()


# ---------------------------------------------------------------------------------------------- labels

def test_tp_rows_balanced_and_on_real_calls(root):
    tp, calls = _csv(root / "train_tp.csv"), load_calls(root)
    counts = tp.groupby("species_id").size().reindex(range(24), fill_value=0)
    assert (counts == SMALL.tp_per_species).all()
    labelled = calls[calls.label == "tp"]
    assert len(labelled) == len(tp) and (labelled.split == "train").all()
    bands = synthetic_species.species_bands().set_index(["species_id", "songtype_id"])
    for row in tp.itertuples():
        same = labelled[(labelled.recording_id == row.recording_id) & (labelled.species_id == row.species_id)
                         & (labelled.songtype_id == row.songtype_id)]
        hit = [c for c in same.itertuples() if abs(c.t_min - row.t_min) < 0.05 and abs(c.t_max - row.t_max) < 0.05]
        assert hit, f"TP row {row} lies on no call of its species"
        c = hit[0]
        assert row.f_min <= c.f_min and c.f_max <= row.f_max, "the call must lie inside its box"
        band = bands.loc[(row.species_id, row.songtype_id)]
        assert (row.f_min, row.f_max) == (band.f_min, band.f_max), "f box = the template band"
    # Clip truth agrees with the calls.
    truth = load_truth(root, "train").set_index("recording_id")
    for rid, group in calls[calls.split == "train"].groupby("recording_id"):
        assert set(np.flatnonzero(truth.loc[rid].to_numpy())) == set(group.species_id)


def test_fp_rows_ratio_and_no_overlap_with_true_calls(root):
    tp, fp = _csv(root / "train_tp.csv"), _csv(root / "train_fp.csv")
    calls, conf = load_calls(root), load_confusers(root)
    per_species = fp.groupby("species_id").size().reindex(range(24), fill_value=0)
    expected = round(SMALL.fp_per_tp * SMALL.tp_per_species)
    assert (per_species == expected).all()
    assert abs(len(fp) / len(tp) - SMALL.fp_per_tp) < 0.5
    on_conf = conf[conf.label == "fp"]
    assert len(on_conf) == len(fp)
    train_calls = calls[calls.split == "train"]
    for row in fp.itertuples():
        same = train_calls[(train_calls.recording_id == row.recording_id) & (train_calls.species_id == row.species_id)]
        assert not any(_overlap(row.t_min, row.t_max, c.t_min, c.t_max) for c in same.itertuples()), row
        sits = on_conf[(on_conf.recording_id == row.recording_id) & (on_conf.species_id == row.species_id)
                       & (on_conf.t_min == row.t_min) & (on_conf.t_max == row.t_max)]
        assert len(sits) == 1, f"FP row {row} is on no confuser"
        c = sits.iloc[0]
        assert row.f_min - 1 <= c.f_min and c.f_max <= row.f_max + 1, "the confuser sits in the species' band"


def _band_energy(x: np.ndarray, sr: int, lo: float, hi: float, frame: int = 2048) -> np.ndarray:
    """Energy per frame (hop = frame) in [lo, hi] Hz."""
    n = x.size // frame
    frames = x[: n * frame].reshape(n, frame) * np.hanning(frame)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    f = np.fft.rfftfreq(frame, 1 / sr)
    return spec[:, (f >= lo) & (f <= hi)].sum(axis=1)


def test_planted_call_is_audible_in_its_band(root):
    tp, calls, conf = _csv(root / "train_tp.csv"), load_calls(root), load_confusers(root)
    loud = calls[(calls.label == "tp") & (calls.snr_db >= 10)].sort_values("snr_db", ascending=False)
    assert len(loud) >= 3
    checked = 0
    for call in loud.head(5).itertuples():
        box = tp[(tp.recording_id == call.recording_id) & (tp.species_id == call.species_id)
                 & ((tp.t_min - call.t_min).abs() < 0.05)].iloc[0]
        x, sr = sf.read(str(root / "train" / f"{call.recording_id}.flac"))
        energy = _band_energy(x, sr, box.f_min, box.f_max)
        t = (np.arange(energy.size) + 0.5) * 2048 / sr
        inside = (t >= box.t_min) & (t <= box.t_max)
        events = pd.concat([calls[calls.recording_id == call.recording_id],
                            conf[conf.recording_id == call.recording_id]])
        busy = np.zeros(t.size, dtype=bool)
        for e in events.itertuples():
            busy |= (t >= e.t_min - 0.1) & (t <= e.t_max + 0.1)
        if inside.sum() < 2 or (~busy).sum() < 10:
            continue
        assert energy[inside].mean() > 3.0 * np.median(energy[~busy]), f"call {call} not above the background"
        checked += 1
    assert checked >= 2


# ---------------------------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("level", [dict(), dict(difficulty="realistic", n_species=6)])
def test_same_seed_same_bytes_any_workers(tmp_path, level):
    a = generate(tmp_path / "a", _tiny(5, **level), workers=1, progress=False)
    b = generate(tmp_path / "b", _tiny(5, **level), workers=2, progress=False)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 10
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate(tmp_path / "c", _tiny(6, **level), workers=1, progress=False)
    assert (a / "train_tp.csv").read_bytes() != (c / "train_tp.csv").read_bytes()
    flac_a, flac_c = sorted((a / "train").glob("*.flac")), sorted((c / "train").glob("*.flac"))
    assert [p.name for p in flac_a] != [p.name for p in flac_c]
    assert not np.array_equal(sf.read(str(flac_a[0]))[0], sf.read(str(flac_c[0]))[0])


# What the generator wrote before `variation` and the realistic level existed (commit 47ae525) for tiny
# sets: the bytes of every CSV (a digest: exact, the plan is integer and RNG draws) and the RMS of every
# FLAC's int16 PCM in file order (compared at 1e-4: the rendering's float arithmetic may move a sample by
# one LSB when numpy/scipy change; exact PCM digests broke that way with numpy 2.4 / scipy 1.17, while
# 47ae525's generator and today's still wrote identical PCM side by side on the same machine).
_PRE_VARIATION_TABLE_DIGESTS = {("medium", 0): "f5745e7a96a81c15", ("hard", 5): "10a9435d47d7d71c"}
_PRE_VARIATION_RMS = {("medium", 0): [297.1, 503.08, 1080.46, 1907.56, 2145.82, 1403.13],
                      ("hard", 5): [439.07, 667.57, 1032.86, 1481.94, 977.1, 613.47]}
_PRE_VARIATION_TABLES = ("sample_submission.csv", "train_fp.csv", "train_tp.csv", "truth/calls.csv",
                         "truth/confusers.csv", "truth/test_labels.csv", "truth/train_labels.csv")


def _table_digest(root: Path) -> str:
    tables = hashlib.sha256()
    for rel in sorted(_PRE_VARIATION_TABLES):
        tables.update(rel.encode())
        tables.update((root / rel).read_bytes())
    return tables.hexdigest()[:16]


def _audio_rms(root: Path) -> list[float]:
    return [float(np.sqrt(np.mean(sf.read(str(p), dtype="int16")[0].astype(np.float64) ** 2)))
            for p in sorted(root.rglob("*.flac"))]


@pytest.mark.parametrize("difficulty,seed,variation", [("medium", 0, None), ("hard", 5, 0.0)])
def test_variation_zero_is_byte_identical_to_the_data_before_it(tmp_path, difficulty, seed, variation):
    root = generate(tmp_path / "d", _tiny(seed, difficulty=difficulty, variation=variation), progress=False)
    assert _table_digest(root) == _PRE_VARIATION_TABLE_DIGESTS[(difficulty, seed)]
    np.testing.assert_allclose(_audio_rms(root), _PRE_VARIATION_RMS[(difficulty, seed)], rtol=1e-4)
    assert json.loads((root / "manifest.json").read_text())["config"]["variation"] == 0.0
    assert load_distractors(root).empty
    shapes = load_call_shapes(root)
    assert len(shapes) == len(load_calls(root)) and (shapes.individual == 0).all()


def test_plan_is_deterministic():
    p1, p2 = plan_dataset(_tiny(9)), plan_dataset(_tiny(9))
    pd.testing.assert_frame_equal(p1.tp, p2.tp)
    pd.testing.assert_frame_equal(p1.fp, p2.fp)
    assert p1.stats == p2.stats


# ---------------------------------------------------------------------------------------------- statistics

def test_presence_follows_the_test_prior():
    plan = plan_dataset(SyntheticConfig(n_train=8, n_test=1500, seed=11, tp_per_species=1, fp_per_tp=1.0))
    presence = np.array(plan.stats["test_presence_per_species"])
    prior = np.array(RFCX_TEST_PRIOR)
    assert int(np.argmax(presence)) == 3
    assert np.abs(presence - prior).max() < 0.045
    assert np.corrcoef(presence, prior)[0, 1] > 0.98
    assert 2.6 < presence.sum() < 3.5


@pytest.mark.parametrize("difficulty,low,high,tp", [("easy", 0.0, 0.10, 30), ("medium", 0.14, 0.26, 20),
                                                     ("hard", 0.38, 0.52, 10)])
def test_difficulty_levels(difficulty, low, high, tp):
    plan = plan_dataset(SyntheticConfig(n_train=60, n_test=200, seed=1, difficulty=difficulty))
    s = plan.stats
    assert low <= s["share_calls_below_0db"] <= high
    assert s["n_tp_rows"] == 24 * tp
    assert s["tp_share_of_train_calls"] < 0.5
    counts = plan.tp.groupby("species_id").size()
    assert (counts == tp).all() and len(counts) == 24
    assert s["calls_per_species_train"][19] >= 3 * tp, "rare species are topped up in train"
    test_bands = {e.species_id for p in plan.test for e in p.events if not e.is_call}
    expected_bands = {"easy": {k for k in range(24) if k % 3 == 0}, "medium": {k for k in range(24) if k % 3 < 2},
                      "hard": set(range(24))}[difficulty]
    assert test_bands == expected_bands, "natural confusers sit in 1/3, 2/3 or all of the species' bands"
    if difficulty == "hard":
        assert s["n_confusers"]["test"] / 200 > 20


def test_fewer_species_and_config_validation():
    plan = plan_dataset(_tiny(2, n_species=5))
    assert set(plan.tp.species_id) == set(range(5))
    for bad in (dict(difficulty="brutal"), dict(n_species=25), dict(sample_rate=16000), dict(duration_s=5.0)):
        with pytest.raises(ValueError):
            plan_dataset(_tiny(2, **bad))


# ---------------------------------------------------------------------------------------------- reuse and atomicity

def test_ensure_synthetic_reuses_and_refuses_a_mismatch(root, monkeypatch):
    manifest = (root / "manifest.json").read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("must not regenerate")

    monkeypatch.setattr(synthetic_api, "generate", boom)
    assert ensure_synthetic(root, SMALL, progress=False) == root
    assert (root / "manifest.json").read_bytes() == manifest
    with pytest.raises(ValueError) as err:
        ensure_synthetic(root, SyntheticConfig(n_train=13, n_test=6, seed=3, tp_per_species=2))
    assert str(root) in str(err.value) and "n_train" in str(err.value)
    with pytest.raises(ValueError, match="difficulty"):
        ensure_synthetic(root, SyntheticConfig(n_train=12, n_test=6, seed=3, tp_per_species=2, difficulty="hard"))


def test_ensure_synthetic_generates_once_and_default_tp_matches(tmp_path):
    cfg = _tiny(4, tp_per_species=None, difficulty="hard", n_species=3, fp_per_tp=1.0)
    root = ensure_synthetic(tmp_path / "d", cfg, progress=False)
    assert (root / "manifest.json").is_file()
    assert len(_csv(root / "train_tp.csv")) == 3 * 10
    # tp_per_species=None resolves to the difficulty default, so the explicit value is the same data set.
    assert ensure_synthetic(root, _tiny(4, tp_per_species=10, difficulty="hard", n_species=3, fp_per_tp=1.0)) == root
    with pytest.raises(FileExistsError):
        generate(root, cfg, progress=False)


def test_generation_is_atomic_and_removes_stale_temp(tmp_path, monkeypatch):
    target = tmp_path / "data"
    stale = tmp_path / ".data.999999999.x1.tmp"      # a pid that cannot exist: a killed run's leftovers
    stale.mkdir()
    (stale / "train_tp.csv").write_text("half")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_api, "_render_all", killed)   # what generate() calls
    with pytest.raises(KeyboardInterrupt):
        generate(target, _tiny(1), progress=False)
    assert not target.exists(), "nothing may appear at root before the data set is complete"
    assert not stale.exists()
    assert not list(tmp_path.glob(".data.*.tmp"))
    monkeypatch.undo()
    generate(target, _tiny(1), progress=False)
    assert (target / "manifest.json").is_file() and not list(tmp_path.glob(".data.*.tmp"))


def test_cli(tmp_path, capsys):
    root = tmp_path / "cli"
    args = [str(root), "--n-train", "3", "--n-test", "2", "--duration-s", "10", "--tp-per-species", "1",
            "--fp-per-tp", "2", "--seed", "7", "--no-progress"]
    assert synthetic.main(args) == 0
    assert "TP rows" in capsys.readouterr().out
    assert json.loads((root / "manifest.json").read_text())["config"]["seed"] == 7
    assert synthetic.main(args) == 0                    # reused
    assert synthetic.main(args[:-2] + ["8", "--no-progress"]) == 2
    assert "seed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- individuals

def _plan_shapes(variation: float):
    plan = plan_dataset(SyntheticConfig(n_train=20, n_test=10, seed=4, tp_per_species=2, variation=variation))
    return plan, synthetic_tables._calls_frame(plan), synthetic_tables._call_shapes_frame(plan)


def test_variation_gives_every_individual_its_own_song():
    plan0, calls0, shapes0 = _plan_shapes(0.0)
    plan1, calls1, shapes1 = _plan_shapes(1.0)
    # Only shapes change: who sings, how loud and which calls carry labels stay as at variation 0 (the
    # times move a little with the durations, so compare as sets).
    cols = ["split", "recording_id", "species_id", "songtype_id", "snr_db", "label"]
    assert sorted(calls0[cols].itertuples(index=False)) == sorted(calls1[cols].itertuples(index=False))
    traits = ["f_a", "duration_s", "fm_rate", "pulse_rate", "note_scale", "curve"]
    keys = ["species_id", "songtype_id"]
    spread0 = shapes0.groupby(keys)[traits].std().fillna(0.0)
    assert (spread0.to_numpy() < 1e-9).all(), "variation 0: every call has its species' song"
    # Relative spread of each trait over the calls of a song type, where the song type has the trait.
    means = shapes1.groupby(keys)[traits].mean()
    relative = (shapes1.groupby(keys)[traits].std() / means).where(means > 0)
    assert (relative.median() > 0.05).all(), relative.median()
    # 1-2 individuals per (recording, species); every call of one individual has the individual's song.
    per_rec = shapes1.groupby(["split", "recording_id", "species_id"]).individual.nunique()
    assert set(per_rec) == {1, 2}
    own = shapes1.groupby(["split", "recording_id", "species_id", "songtype_id", "individual"])[traits].nunique()
    assert (own == 1).all().all()
    # Pitch moves by up to +/-9% (plus the call's own +/-3%), and the boxes widen to hold every version.
    bands = synthetic_species.species_bands(variation=1.0).set_index(["species_id", "songtype_id"])
    nominal = synthetic_species.species_bands().set_index(["species_id", "songtype_id"])
    assert ((bands.f_min < nominal.f_min) & (bands.f_max > nominal.f_max)).all()
    for c in calls1.itertuples():
        band = bands.loc[(c.species_id, c.songtype_id)]
        assert band.f_min <= c.f_min and c.f_max <= band.f_max, c
    assert set(zip(plan1.tp.f_min, plan1.tp.f_max)) <= set(zip(bands.f_min, bands.f_max))


def _log_spec(x: np.ndarray, band: tuple[float, float], sr: int = 48000) -> np.ndarray:
    """Log power spectrogram rows inside `band` (Hz): what a band-limited template detector sees."""
    from scipy.signal import stft

    f, _, z = stft(x, sr, nperseg=1024, noverlap=512)
    return np.log(np.abs(z[(f >= band[0]) & (f <= band[1])]) ** 2 + 1e-6)


def _template_ncc(template: np.ndarray, target: np.ndarray) -> float:
    """Best normalized cross-correlation of a spectrogram template slid in time over a target."""
    t = (template - template.mean()) / template.std()
    pad = np.full((target.shape[0], t.shape[1]), target.min())
    padded = np.concatenate([pad, target, pad], axis=1)
    best = -1.0
    for lag in range(padded.shape[1] - t.shape[1] + 1):
        w = padded[:, lag:lag + t.shape[1]]
        best = max(best, float((t * (w - w.mean())).mean() / (w.std() + 1e-9)))
    return best


def test_variation_lowers_the_template_fit_between_individuals():
    """A template cut from one individual's call fits another individual's call much worse at variation
    1 (it fits every call alike at 0): template matching no longer wins by construction."""
    rng = np.random.default_rng(0)
    for species_id in (0, 3, 12):            # a sweep, a two-note call, a whistle
        song = synthetic.SPECIES[species_id].songs[0]
        band = song.template_band(1.0)
        ncc = {}
        for variation in (0.0, 1.0):
            scores = []
            for _ in range(4):
                a, b = (synthetic_species._individual_song(song, rng.uniform(-1, 1, synthetic_species._N_VOICE_DRAWS), variation)
                        for _ in range(2))
                waves = [synthetic_render._synth_call(v, int(v.duration_s * 48000), 48000, 1.0, rng) for v in (a, b)]
                scores.append(_template_ncc(*(_log_spec(w, band) for w in waves)))
            ncc[variation] = float(np.mean(scores))
        assert ncc[0.0] > 0.8 and ncc[1.0] < ncc[0.0] - 0.15, (species_id, ncc)


# ---------------------------------------------------------------------------------------------- realistic

@pytest.fixture(scope="module")
def realistic_plan():
    return plan_dataset(SyntheticConfig(n_train=40, n_test=60, seed=2, difficulty="realistic"))


def test_realistic_level_statistics(realistic_plan):
    plan, s = realistic_plan, realistic_plan.stats
    assert plan.config.variation == 1.0 and plan.config.tp_per_species == 10
    assert (plan.tp.groupby("species_id").size() == 10).all() and plan.tp.species_id.nunique() == 24
    per_clip = s["per_test_clip"]
    assert 40 <= per_clip["calls"] <= 52, per_clip
    assert 16 <= per_clip["confusers"] <= 24, per_clip
    assert 8 <= per_clip["distractors"] <= 12, per_clip
    q1, median, _ = s["tp_snr_db_quartiles"]
    assert 0.0 <= median <= 4.0 and q1 <= -1.0, s["tp_snr_db_quartiles"]
    assert s["share_calls_below_0db"] >= 0.44, "at least as hard as hard"
    shares = s["share_clips_with"]
    assert 0.45 <= shares["insects"] <= 0.75 and 0.05 <= shares["rain"] <= 0.3, shares
    assert shares["wind"] > 0.2 and shares["clicks"] > 0.15, shares


def test_realistic_confusers_mimic_every_class(realistic_plan):
    """Every species' band holds confusers that are its call but for one trait."""
    conf = synthetic_tables._confusers_frame(realistic_plan)
    mimics = conf[conf.kind.isin(set(synthetic_plan._MIMIC_KIND.values()))]
    assert set(mimics.species_id) == set(range(24))
    assert 0.35 <= len(mimics) / len(conf) <= 0.65
    for sp in synthetic.SPECIES:
        kinds = set(mimics[mimics.species_id == sp.species_id].kind)
        assert kinds <= {synthetic_plan._MIMIC_KIND[s.shape] for s in sp.songs}, (sp.species_id, kinds)
    events = [e for p in realistic_plan.test for e in p.events if e.kind == "reversed_notes"]
    song = synthetic.SPECIES[3].songs[0]
    e = next(e for e in events if e.species_id == 3)
    assert (e.voice.f_a < e.voice.f_b) != (song.f_a < song.f_b), "the notes come in the other order"


def test_realistic_data_renders(tmp_path):
    root = generate(tmp_path / "r", _tiny(3, difficulty="realistic", n_species=4), progress=False)
    distractors = load_distractors(root)
    assert len(distractors) > 0 and set(distractors.kind) <= set(synthetic_plan._DISTRACTOR_KINDS)
    assert (load_call_shapes(root).groupby(["recording_id", "species_id"]).individual.max() <= 1).all()
    for path in sorted((root / "train").glob("*.flac"))[:2]:
        x, _ = sf.read(str(path), dtype="int16")
        assert x.std() > 1 and np.abs(x.astype(np.int32)).max() < 32767
    assert json.loads((root / "manifest.json").read_text())["config"]["variation"] == 1.0


# ---------------------------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("bad,field", [(dict(variation=-0.1), "variation"), (dict(variation=2.5), "variation"),
                                       (dict(variation="lots"), "variation"), (dict(variation=True), "variation"),
                                       (dict(difficulty="brutal"), "difficulty")])
def test_bad_values_fail_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=field) as err:
        plan_dataset(_tiny(1, **bad))
    if field == "difficulty":
        assert "realistic" in str(err.value), "the error lists the levels"


def test_cli_variation_flag(tmp_path, capsys):
    args = [str(tmp_path / "v"), "--n-train", "3", "--n-test", "2", "--duration-s", "10", "--tp-per-species", "1",
            "--fp-per-tp", "2", "--no-progress"]
    assert synthetic.main(args + ["--variation", "-1"]) == 2
    assert "variation" in capsys.readouterr().err
    assert synthetic.main(args + ["--variation", "0.5"]) == 0
    assert "per test clip" in capsys.readouterr().out
    assert json.loads((tmp_path / "v" / "manifest.json").read_text())["config"]["variation"] == 0.5


def test_root_from_before_variation_is_reused_as_variation_zero(root, tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["config"]["variation"]
    (old / "manifest.json").write_text(json.dumps(manifest))

    def boom(*args, **kwargs):
        raise AssertionError("must not regenerate")

    monkeypatch.setattr(synthetic_api, "generate", boom)
    assert ensure_synthetic(old, SMALL, progress=False) == old
    with pytest.raises(ValueError, match="variation"):
        ensure_synthetic(old, SyntheticConfig(n_train=12, n_test=6, seed=3, tp_per_species=2, variation=0.5))
