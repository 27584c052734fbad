"""Decoding checks and the memory-mapped int16 audio cache."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rfcx_lightning.data.audio import AudioCache, AudioError, decode, to_int16

SR = 48000
DUR = 2.0  # seconds: short clips keep the tests fast; decode is told the expected duration
KW = dict(expected_duration_s=DUR)


def _noise(seconds: float = DUR, sr: int = SR, channels: int = 1, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (int(round(seconds * sr)),) if channels == 1 else (int(round(seconds * sr)), channels)
    return (amp * rng.uniform(-1, 1, size=shape)).astype(np.float32)


def _flac(path: Path, data: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, format="FLAC", subtype="PCM_16")
    return path


def test_decode_resamples_to_target_length(tmp_path):
    path = _flac(tmp_path / "a.flac", _noise())
    out = decode(path, **KW)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.shape == (int(DUR * 32000),)
    assert 0.05 < np.std(out) < 0.3


def test_decode_keeps_own_length_without_expected_duration(tmp_path):
    path = _flac(tmp_path / "a.flac", _noise(1.5))
    assert decode(path, expected_duration_s=None).shape == (48000,)


def test_longer_file_is_trimmed(tmp_path):
    path = _flac(tmp_path / "long.flac", _noise(DUR + 1.0))
    assert decode(path, **KW).shape == (int(DUR * 32000),)


def test_stereo_raises_unless_downmixed(tmp_path):
    data = _noise(channels=2)
    path = _flac(tmp_path / "stereo.flac", data)
    with pytest.raises(AudioError, match="stereo.flac.*channels"):
        decode(path, **KW)
    mono = decode(path, downmix=True, target_sr=SR, **KW)
    expected = sf.read(path, dtype="float32")[0].mean(axis=1)
    np.testing.assert_allclose(mono, expected, atol=1e-6)


def test_wrong_rate_raises_unless_allowed(tmp_path):
    path = _flac(tmp_path / "r44.flac", _noise(sr=44100), sr=44100)
    with pytest.raises(AudioError, match="r44.flac.*44100"):
        decode(path, **KW)
    assert decode(path, allow_resample_other_rates=True, **KW).shape == (int(DUR * 32000),)


def test_truncated_raises(tmp_path):
    path = _flac(tmp_path / "short.flac", _noise(DUR - 0.5))
    with pytest.raises(AudioError, match="short.flac.*truncated"):
        decode(path, **KW)
    # within tolerance is fine (padded to the exact length)
    ok = _flac(tmp_path / "almost.flac", _noise(DUR - 0.05))
    assert decode(ok, **KW).shape == (int(DUR * 32000),)


def test_empty_raises(tmp_path):
    path = _flac(tmp_path / "empty.flac", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="empty.flac"):
        decode(path, **KW)


def test_silent_raises(tmp_path):
    path = _flac(tmp_path / "silent.flac", np.zeros(int(DUR * SR), dtype=np.float32))
    with pytest.raises(AudioError, match="silent.flac.*zeros"):
        decode(path, **KW)


def test_corrupt_and_missing_raise_naming_file(tmp_path):
    path = tmp_path / "corrupt.flac"
    path.write_bytes(b"fLaC" + os.urandom(2000))
    with pytest.raises(AudioError, match="corrupt.flac"):
        decode(path, **KW)
    with pytest.raises(AudioError, match="nothere.flac"):
        decode(tmp_path / "nothere.flac", **KW)


def test_to_int16_scales_down_instead_of_clipping():
    data, gain, clipped = to_int16(np.array([0.5, -2.0, 1.0], dtype=np.float32))
    assert gain == pytest.approx(0.5) and clipped == 0
    assert data.tolist() == [8192, -32767, 16384]
    data, gain, _ = to_int16(np.array([0.5, -1.0], dtype=np.float32))
    assert gain == 1.0 and data.tolist() == [16384, -32767]


def _items(tmp_path: Path, n: int, split: str = "train") -> list[tuple[str, str, Path]]:
    return [(split, f"00{i}31600{i}", _flac(tmp_path / "flac" / f"00{i}31600{i}.flac", _noise(seed=i)))
            for i in range(n)]


def test_cache_round_trip_and_resume(tmp_path):
    cache = AudioCache(tmp_path / "cache")
    items = _items(tmp_path, 2)
    assert cache.build(items, workers=1, progress=False, **KW) == 2
    for split, rid, flac in items:
        assert cache.path(split, rid) == tmp_path / "cache" / "32000hz" / split / f"{rid}.npy"
        assert cache.has(split, rid)
        expected = decode(flac, **KW)
        got = cache.read(split, rid)
        assert cache.n_samples(split, rid) == len(expected) == len(got)
        np.testing.assert_allclose(got, expected, atol=1.0 / 32767)
    # resume: nothing new to build, files untouched
    mtime = cache.path("train", items[0][1]).stat().st_mtime_ns
    assert cache.build(items, workers=1, progress=False, **KW) == 0
    assert cache.path("train", items[0][1]).stat().st_mtime_ns == mtime
    more = items + _items(tmp_path / "more", 3)[2:]
    assert cache.build(more, workers=1, progress=False, **KW) == 1
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".npy"]
    assert leftovers == []


def test_read_crops_and_zero_pads_at_edges(tmp_path):
    cache = AudioCache(tmp_path / "cache")
    (split, rid, _), = _items(tmp_path, 1)
    cache.build([(split, rid, _)], workers=1, progress=False, **KW)
    full = cache.read(split, rid)
    n = len(full)
    np.testing.assert_array_equal(cache.read(split, rid, 100, 50), full[100:150])
    head = cache.read(split, rid, -10, 30)
    assert head.shape == (30,) and np.all(head[:10] == 0)
    np.testing.assert_array_equal(head[10:], full[:20])
    tail = cache.read(split, rid, n - 5, 20)
    assert tail.shape == (20,) and np.all(tail[5:] == 0)
    np.testing.assert_array_equal(tail[:5], full[-5:])
    assert np.all(cache.read(split, rid, n + 100, 7) == 0)
    assert cache.read(split, rid, n + 100).shape == (0,)
    assert np.abs(full).max() <= 1.0


def test_cache_pickles_without_handles(tmp_path):
    cache = AudioCache(tmp_path / "cache", max_open=1)
    items = _items(tmp_path, 2)
    cache.build(items, workers=1, progress=False, **KW)
    first = cache.read("train", items[0][1], 0, 10)
    cache.read("train", items[1][1], 0, 10)
    assert len(cache._handles) == 1  # bounded LRU
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone._handles) == 0
    np.testing.assert_array_equal(clone.read("train", items[0][1], 0, 10), first)


def test_build_parallel_and_stale_temp_removed(tmp_path):
    cache = AudioCache(tmp_path / "cache")
    stale = cache.root / "train" / ".x.npy.1a2b3c4d.tmp"            # workspace.atomic_path's temporary name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    items = _items(tmp_path, 3)
    assert cache.build(items, workers=2, progress=False, **KW) == 3
    assert not stale.exists()
    names = sorted(p.name for p in (cache.root / "train").iterdir())
    assert names == sorted(f"{rid}.npy" for _, rid, _ in items)
    np.testing.assert_allclose(cache.read("train", items[2][1]), decode(items[2][2], **KW), atol=1.0 / 32767)


def test_build_error_names_file_and_keeps_good_ones(tmp_path):
    cache = AudioCache(tmp_path / "cache")
    items = _items(tmp_path, 2)
    bad = _flac(tmp_path / "flac" / "bad.flac", _noise(DUR - 1.0))
    with pytest.raises(AudioError, match="bad.flac"):
        cache.build(items + [("train", "bad", bad)], workers=2, progress=False, **KW)
    assert not cache.has("train", "bad")
    leftovers = [p for p in cache.root.rglob("*") if p.is_file() and p.suffix != ".npy"]
    assert leftovers == []


def test_cache_rejects_path_like_ids(tmp_path):
    cache = AudioCache(tmp_path / "cache")
    for bad in ("../x", "a/b", ".x", ""):
        with pytest.raises(ValueError):
            cache.path("train", bad)
    with pytest.raises(FileNotFoundError, match="build"):
        cache.read("train", "missing")
