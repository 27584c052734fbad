"""Embedded synthetic RFCx soundscapes: the library's default data, with the hidden truth beside it.

The real RFCx data is not redistributable and too large for a smoke run, so the library ships a
generator that writes a data root in exactly the Kaggle layout (see ``annotations.py``) plus the clip
truth that Kaggle never released. The soundscapes are built to make the library's tricks matter:

* labels are sparse: a detector-like choice of ``tp_per_species`` loud calls per species is labelled TP,
  most calls stay unlabelled (masked loss, pseudo labels);
* confusers (other sounds in a species' band) carry the FP rows, and they also occur in the test set;
* species share bands and some share call shapes at different pitches (frequency-position channel);
* clip presence follows ``RFCX_TEST_PRIOR`` while TP rows are balanced (prior calibration);
* SNR, confuser density and label count are set by the difficulty (``DIFFICULTIES``):

  =========  ==========================  =========  ==================================================
  level      in-band SNR of calls        TP rows    confusers (train and test)
  =========  ==========================  =========  ==================================================
  easy       88% U(6, 20) dB, 12% U(-4,  30 per     in 1/3 of the species' bands, 0.5 per band per
             6) dB: ~5% below 0 dB       species    clip, 0.25-0.5x or 2-3x the call's duration
  medium     N(6, 7) dB: ~20% below 0    20         in 2/3 of the bands, 0.6 per band per clip,
                                                    0.3-0.6x or 1.7-2.8x the call's duration
  hard       N(1, 8) dB: ~45% below 0    10         in every band, 1 per band per clip, 0.6-1.6x
  realistic  N(0, 7) dB: ~50% below 0;   10, on     as hard, 0.83 per band per clip (~20 per clip),
             ~46 calls per clip;         calls of   half of them the call but for one trait
             variation 1                 median     (``_MIMIC_KIND``: reversed notes, the opposite
                                         ~+2 dB     sweep, another pulse / AM rate, vibrato, odd
                                                    harmonics); ~10 distractors per clip
  =========  ==========================  =========  ==================================================

  SNRs are clipped to [-12, 28] dB; confusers are 2 dB louder on average. Train recordings get extra
  calls of rare species (3 calls per TP row) and extra confusers until every species has its TP and FP
  rows, as the real train set was picked where detectors fired. The TP / FP picks favour loud events
  like a template detector (``_detector_weight``); at realistic only slightly, so a quarter of the TP
  rows sit on calls below -2 dB, as in RFCx. Realistic is hard plus: 4.9x longer bouts (at most 45%
  of a clip filled by one species), distractors (other birds, frogs, engine hum, crackles, anywhere in
  frequency), insect choruses in ~60% of clips, rain in ~15%, wind in ~40%, clicks in ~30%, and a
  short attenuated echo after ~30% of the calls;
* individuals differ (``variation``, 0 .. 2, default 0; realistic 1): every (recording, species) has
  1-2 individuals, each singing its own version of the call (``_individual_song``): note lengths,
  gaps, trill / FM / AM rates, FM depth and sweep end points by +/-20% x variation, sweep curvature by
  +/-30%, harmonic gains by +/-50%, pitch by +/-9% (all x variation); each call still varies around its
  individual's version. Mimicking confusers and distractors are sung by one-off individuals. The boxes
  (template bands) widen to hold every version. At variation 0 nothing is drawn and the data are
  byte-identical to those of the generator before variation existed.

Generation is split into a cheap, sequential *plan* (who sings when, how loud, which boxes are
labelled) and an expensive *render* (audio), one task per recording. Every recording draws from its own
RNGs derived from ``(seed, split, index, purpose)``, so ``workers > 1`` writes byte-identical files.

Layout written under ``root``::

    train/<id>.flac, test/<id>.flac      60 s mono 48 kHz 16-bit FLAC
    train_tp.csv, train_fp.csv          recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max
    sample_submission.csv               recording_id,s0..s{n-1} (all 0)
    truth/train_labels.csv, truth/test_labels.csv   clip presence (0/1), sample-submission format
    truth/calls.csv                     every synthesized call
    truth/confusers.csv                 every confuser event (label 'fp' where an FP row sits on it)
    truth/distractors.csv               every distractor (realistic; header only at the other levels)
    truth/call_shapes.csv               the song (individual's version) of each call, row for row
    manifest.json                       config + format version + statistics; written last

Usage: ``python -m rfcx_lightning.data.synthetic ROOT --n-train 120 --difficulty realistic --workers 2``
(``--variation V`` sets the individual variation at any level).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.fft as sfft
import soundfile as sf

from .priors import RFCX_TEST_PRIOR

__all__ = [
    "DIFFICULTIES",
    "FORMAT_VERSION",
    "SPECIES",
    "DifficultySpec",
    "SongSpec",
    "SpeciesSpec",
    "SyntheticConfig",
    "SyntheticPlan",
    "ensure_synthetic",
    "generate",
    "load_call_shapes",
    "load_calls",
    "load_confusers",
    "load_distractors",
    "load_truth",
    "main",
    "plan_dataset",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ANNOTATION_COLUMNS = ["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max"]
CALL_COLUMNS = ["split", "recording_id", "species_id", "songtype_id", "t_min", "t_max", "f_min", "f_max",
                "snr_db", "label"]
CONFUSER_COLUMNS = ["split", "recording_id", "species_id", "songtype_id", "kind", "t_min", "t_max", "f_min",
                    "f_max", "snr_db", "label"]
DISTRACTOR_COLUMNS = ["split", "recording_id", "kind", "t_min", "t_max", "f_min", "f_max", "snr_db"]
# The song every call was rendered from (its individual's version), one row per row of calls.csv.
SHAPE_COLUMNS = ["split", "recording_id", "species_id", "songtype_id", "t_min", "individual", "f_a", "f_b",
                 "duration_s", "fm_depth", "fm_rate", "pulse_rate", "pulse_duty", "am_rate", "am_depth",
                 "note_scale", "gap_scale", "curve"]
SPLITS = ("train", "test")
_SPLIT_CODE = {"train": 1, "test": 2}
# RNG streams: one per purpose, so adding draws to one never shifts another. Voices (individuals,
# data.variation) and the realistic level's extra sounds have their own, so at variation 0 and at the
# older levels every other stream draws exactly what it drew before they existed.
_STREAM_PLAN, _STREAM_AUDIO, _STREAM_TOPUP, _STREAM_IDS = 0, 1, 2, 3
_STREAM_VOICES, _STREAM_SCENE, _STREAM_SCENE_AUDIO = 4, 5, 6
_TEMP_MARKER = ".tmp-"
# Config fields added after format 1 was first written, with the value that older roots were made with:
# a root from before ``variation`` existed holds exactly the data of variation 0, so it is reused.
_LEGACY_CONFIG = {"variation": 0.0}
_PEAK = 0.98           # recordings whose mix peaks above this are scaled down (SNRs are unchanged)
_SNR_CLIP = (-12.0, 28.0)
# Every species has at least this many calls per TP row in train (rare species are topped up).
_CALLS_PER_TP = 3


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Equal configs (after resolving difficulty defaults) give identical data."""

    n_train: int = 120
    n_test: int = 60
    seed: int = 0
    difficulty: str = "medium"          # "easy" | "medium" | "hard" | "realistic"
    duration_s: float = 60.0
    sample_rate: int = 48000
    tp_per_species: int | None = None    # None -> difficulty default (easy 30, medium 20, hard/realistic 10)
    fp_per_tp: float = 6.0               # FP rows ~6x TP rows
    n_species: int = 24                  # presence prior = RFCX_TEST_PRIOR[:n_species]
    variation: float | None = None       # between-individual call variation (0..2; 1 = +/-20% shape, +/-9%
                                         # pitch); None -> difficulty default (0, realistic 1)


@dataclass(frozen=True)
class DifficultySpec:
    """The knobs a difficulty level turns; see ``DIFFICULTIES`` for the values and ``_draw_snr``.

    SNR is the in-band SNR of a call: its mean power inside the species' template band over its
    duration, against the background (noise, insects, rain) in the same band and time span.
    """

    tp_per_species: int
    snr_normal: tuple[float, float]      # (mean, sd) dB of the main SNR component
    snr_uniform: tuple[float, float] | None  # if set, the main component is uniform instead
    faint_share: float                   # share of calls drawn from the faint component
    faint_range: tuple[float, float]     # uniform dB range of the faint component
    confuser_bands: int                  # of every 3 species (by id mod 3), how many bands hold confusers
    confuser_rate: float                 # confusers per such band per clip (train and test)
    confuser_dur_factor: tuple[tuple[float, float], ...]  # duration ranges relative to the species' call
    confuser_snr_offset: float           # confusers are drawn from the call SNR law plus this (dB)
    p_insects: float                     # share of recordings with insect tones
    p_rain: float                        # share of recordings with rain
    # Knobs of the realistic level; the defaults leave the other levels exactly as they were.
    variation: float = 0.0               # default of SyntheticConfig.variation at this level
    calls_factor: float = 1.0            # scales each species' mean calls per clip (longer bouts)
    max_calls: int = 6                   # calls of a species per clip at most ...
    call_time_share: float | None = None  # ... and at most this share of the clip filled by its calls
    detector_snr: tuple[float, float] = (4.0, 3.0)  # (centre, width) dB of the label detector's logistic
    mimic_share: float = 0.0             # share of confusers that copy the call but for one trait
    distractor_rate: float = 0.0         # other (non-species) sounds per clip, anywhere in frequency
    insect_count: tuple[int, int] = (1, 4)  # insect tones per insect recording: integers(lo, hi)
    p_wind: float = 0.0                  # share of recordings with low-frequency wind gusts
    p_clicks: float = 0.0                # share of recordings with broadband clicks (twigs, drips)
    p_echo: float = 0.0                  # share of calls followed by a short attenuated echo


DIFFICULTIES: dict[str, DifficultySpec] = {
    # ~5% of calls below 0 dB; confusers in a third of the bands, clearly shorter/longer than the call.
    "easy": DifficultySpec(tp_per_species=30, snr_normal=(0.0, 1.0), snr_uniform=(6.0, 20.0), faint_share=0.12,
                           faint_range=(-4.0, 6.0), confuser_bands=1, confuser_rate=0.5,
                           confuser_dur_factor=((0.25, 0.5), (2.0, 3.0)), confuser_snr_offset=2.0,
                           p_insects=0.3, p_rain=0.15),
    # ~20% of calls below 0 dB; confusers in two thirds of the bands.
    "medium": DifficultySpec(tp_per_species=20, snr_normal=(6.0, 7.0), snr_uniform=None, faint_share=0.0,
                             faint_range=(-8.0, 0.0), confuser_bands=2, confuser_rate=0.6,
                             confuser_dur_factor=((0.3, 0.6), (1.7, 2.8)), confuser_snr_offset=2.0,
                             p_insects=0.4, p_rain=0.25),
    # ~45% of calls below 0 dB; confusers in every band (one per band per clip), of about the call's
    # duration.
    "hard": DifficultySpec(tp_per_species=10, snr_normal=(1.0, 8.0), snr_uniform=None, faint_share=0.0,
                           faint_range=(-8.0, 0.0), confuser_bands=3, confuser_rate=1.0,
                           confuser_dur_factor=((0.6, 1.6),), confuser_snr_offset=2.0,
                           p_insects=0.6, p_rain=0.35),
}
# Hard, made as varied as a held-out RFCx-layout set: individuals differ (variation 1), ~46 calls, ~20
# confusers (half of them the call but for one trait) and ~10 other sounds per clip, labels on calls of
# median SNR ~+2 dB (the detector barely prefers loud calls), insect choruses, wind, clicks and echoes.
DIFFICULTIES["realistic"] = dataclasses.replace(
    DIFFICULTIES["hard"], snr_normal=(0.0, 7.0), confuser_rate=0.83, p_rain=0.15, variation=1.0,
    calls_factor=4.9, max_calls=40, call_time_share=0.45, detector_snr=(0.0, 8.0), mimic_share=0.5,
    distractor_rate=10.0, insect_count=(2, 5), p_wind=0.4, p_clicks=0.3, p_echo=0.3)
# The most variation a config may ask for: at 2 an individual's notes are up to 40% longer or shorter.
_MAX_VARIATION = 2.0


def _resolve(config: SyntheticConfig) -> SyntheticConfig:
    """Fill in difficulty defaults and validate, so equal data means equal resolved configs."""
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    if config.difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {config.difficulty!r}")
    diff = DIFFICULTIES[config.difficulty]
    tp = diff.tp_per_species if config.tp_per_species is None else config.tp_per_species
    variation = diff.variation if config.variation is None else config.variation
    if isinstance(variation, bool) or not isinstance(variation, (int, float)):
        raise ValueError(f"variation must be a number in [0, {_MAX_VARIATION:g}] or None (the difficulty "
                         f"default), got {variation!r}")
    resolved = dataclasses.replace(config, tp_per_species=int(tp), duration_s=float(config.duration_s),
                                   fp_per_tp=float(config.fp_per_tp), sample_rate=int(config.sample_rate),
                                   variation=float(variation))
    problems = []
    if not 0.0 <= resolved.variation <= _MAX_VARIATION:
        problems.append(f"variation must be in [0, {_MAX_VARIATION:g}] (got {resolved.variation})")
    if resolved.n_train < 1 or resolved.n_test < 1:
        problems.append(f"n_train and n_test must be >= 1 (got {resolved.n_train}, {resolved.n_test})")
    if not 1 <= resolved.n_species <= len(SPECIES):
        problems.append(f"n_species must be in 1..{len(SPECIES)} (got {resolved.n_species})")
    if resolved.tp_per_species < 1:
        problems.append(f"tp_per_species must be >= 1 (got {resolved.tp_per_species})")
    if resolved.fp_per_tp < 0:
        problems.append(f"fp_per_tp must be >= 0 (got {resolved.fp_per_tp})")
    if resolved.duration_s < 10.0:
        problems.append(f"duration_s must be >= 10 s so the longest calls fit (got {resolved.duration_s})")
    if resolved.seed < 0:
        problems.append(f"seed must be >= 0 (got {resolved.seed})")
    if problems:
        raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))
    top = max(s.template_band(resolved.variation)[1] for sp in SPECIES for s in sp.songs)
    if resolved.sample_rate / 2 < top * 1.1:
        problems.append(f"sample_rate {resolved.sample_rate} is too low for bands up to {top:.0f} Hz")
    if problems:
        raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))
    return resolved


def _config_dict(config: SyntheticConfig) -> dict:
    """The resolved config as a JSON-ready dict (what the manifest stores and compares)."""
    return json.loads(json.dumps(dataclasses.asdict(_resolve(config))))


# ----------------------------------------------------------------------------------------------------
# Species: bands and call shapes
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SongSpec:
    """One call type (species, songtype). Meaning of f_a / f_b by shape:

    whistle: f_a centre, FM of +/- fm_depth (relative) at fm_rate Hz; sweep: from f_a to f_b;
    two_note: note 1 at f_a, note 2 at f_b; trill: pulses at pulse_rate Hz, each sweeping f_b -> f_a;
    harmonic: fundamental f_a with n_harm harmonics; croak: noise between f_a and f_b, AM at am_rate Hz.
    """

    songtype_id: int
    shape: str
    f_a: float
    f_b: float = 0.0
    duration_s: float = 1.0
    fm_depth: float = 0.0
    fm_rate: float = 0.0
    n_harm: int = 1
    pulse_rate: float = 0.0
    pulse_duty: float = 0.5
    am_rate: float = 0.0
    am_depth: float = 0.0
    pitch_var: float = 0.03              # calls are pitched by 1 +/- pitch_var (uniform)
    share: float = 1.0                   # share of this songtype among the species' calls
    # Shape details an individual's version of the call changes (see ``_individual_song``); the
    # defaults are the species' nominal call.
    note_scale: float = 1.0              # two_note: length of note 1 (relative)
    gap_scale: float = 1.0               # two_note: gap between the notes (relative)
    curve: float = 1.0                   # sweep: curvature exponent of the log-frequency path
    harm_gains: tuple[float, ...] = ()   # harmonic: gain of harmonic k (k = 1..); () = all 1

    def harm_gain(self, k: int) -> float:
        """Gain of harmonic `k` (1-based) on top of the k^-0.7 roll-off."""
        return self.harm_gains[k - 1] if k <= len(self.harm_gains) else 1.0

    def core_band(self) -> tuple[float, float]:
        """Frequency extent of a call at nominal pitch (Hz)."""
        if self.shape == "whistle":
            return self.f_a * (1 - self.fm_depth), self.f_a * (1 + self.fm_depth)
        if self.shape == "two_note":
            lo, hi = sorted((self.f_a, self.f_b))
            return lo * 0.99, hi * 1.01
        if self.shape == "harmonic":
            return self.f_a * (1 - self.fm_depth), self.n_harm * self.f_a * (1 + self.fm_depth)
        lo, hi = sorted((self.f_a, self.f_b))   # sweep, trill, croak
        return lo, hi

    def margin_hz(self) -> float:
        """Spectral spread beyond the instantaneous frequency: onset ramps, pulses, AM sidebands."""
        margin = 30.0
        if self.shape == "trill":
            margin += 2.0 * self.pulse_rate / self.pulse_duty
        if self.shape == "croak":
            margin += self.am_rate
        return margin

    def template_band(self, variation: float = 0.0) -> tuple[float, float]:
        """The (f_min, f_max) of this call type's boxes: every pitch variant fits inside, and with
        `variation` > 0 every individual's version too (the box of a species stays one box)."""
        if variation > 0:
            return _varied_template_band(self, float(variation))
        lo, hi = self.core_band()
        return (round(lo * (1 - self.pitch_var) - self.margin_hz(), 2),
                round(hi * (1 + self.pitch_var) + self.margin_hz(), 2))


@dataclass(frozen=True)
class SpeciesSpec:
    """A species: its call types and how many calls it sings in a clip where it is present."""

    species_id: int
    songs: tuple[SongSpec, ...]
    calls_mean: float                    # mean calls per clip when present (1 .. 6)

    @property
    def family(self) -> str:
        return self.songs[0].shape

    def song(self, songtype_id: int) -> SongSpec:
        for s in self.songs:
            if s.songtype_id == songtype_id:
                return s
        raise KeyError(f"species {self.species_id} has no songtype {songtype_id}")


def _sp(species_id: int, calls_mean: float, *songs: SongSpec) -> SpeciesSpec:
    return SpeciesSpec(species_id, tuple(songs), calls_mean)


# Bands overlap in two clusters (~1-4 kHz and ~4-9 kHz) and two wide sweeps span both; 13 and 15 are
# narrow (~120 and ~240 Hz); 3, 13, 14, 18 are short chirps, 17 and 23 long trills with a songtype 4.
# Whistles 12, 13, 15, 6 and 21 share one shape at different pitches: only frequency tells them apart.
SPECIES: tuple[SpeciesSpec, ...] = (
    _sp(0, 2.5, SongSpec(1, "sweep", 8000, 5600, 1.1)),
    _sp(1, 3.0, SongSpec(1, "trill", 2000, 2500, 2.5, pulse_rate=12, pulse_duty=0.5)),
    _sp(2, 2.0, SongSpec(1, "harmonic", 520, 0, 1.4, fm_depth=0.02, fm_rate=4, n_harm=4)),
    _sp(3, 4.0, SongSpec(1, "two_note", 3500, 2900, 0.6)),
    _sp(4, 3.0, SongSpec(1, "croak", 300, 1100, 1.0, am_rate=25, am_depth=0.8)),
    _sp(5, 2.0, SongSpec(1, "sweep", 4000, 6200, 0.9)),
    _sp(6, 2.0, SongSpec(1, "whistle", 9500, 0, 2.0, fm_depth=0.03, fm_rate=6)),
    _sp(7, 3.0, SongSpec(1, "trill", 4700, 5400, 3.0, pulse_rate=20, pulse_duty=0.5)),
    _sp(8, 2.0, SongSpec(1, "harmonic", 1250, 0, 1.0, fm_depth=0.015, fm_rate=6, n_harm=3)),
    _sp(9, 2.0, SongSpec(1, "croak", 1600, 4200, 1.8, am_rate=8, am_depth=0.7)),
    _sp(10, 2.0, SongSpec(1, "two_note", 7000, 6100, 1.4)),
    _sp(11, 3.0, SongSpec(1, "sweep", 12500, 3000, 0.8)),
    _sp(12, 3.0, SongSpec(1, "whistle", 2600, 0, 1.6, fm_depth=0.04, fm_rate=5)),
    _sp(13, 4.0, SongSpec(1, "whistle", 1050, 0, 0.6, fm_depth=0.008, fm_rate=4, pitch_var=0.02)),
    _sp(14, 3.0, SongSpec(1, "two_note", 4600, 5300, 0.6)),
    _sp(15, 3.0, SongSpec(1, "whistle", 3600, 0, 1.0, fm_depth=0.005, fm_rate=3, pitch_var=0.02)),
    _sp(16, 2.0, SongSpec(1, "trill", 8200, 9000, 2.0, pulse_rate=35, pulse_duty=0.5)),
    _sp(17, 1.5, SongSpec(1, "trill", 1200, 1600, 7.0, pulse_rate=6, pulse_duty=0.6, share=0.6),
        SongSpec(4, "sweep", 1650, 1150, 2.5, share=0.4)),
    _sp(18, 4.0, SongSpec(1, "sweep", 800, 1500, 0.6)),
    _sp(19, 2.0, SongSpec(1, "harmonic", 2000, 0, 1.2, fm_depth=0.01, fm_rate=5, n_harm=5)),
    _sp(20, 2.0, SongSpec(1, "croak", 6000, 9000, 1.5, am_rate=40, am_depth=0.8)),
    _sp(21, 2.0, SongSpec(1, "whistle", 11000, 0, 1.0, fm_depth=0.03, fm_rate=8)),
    _sp(22, 2.0, SongSpec(1, "sweep", 13300, 4000, 1.5)),
    _sp(23, 1.5, SongSpec(1, "trill", 2800, 3400, 6.5, pulse_rate=10, pulse_duty=0.5, share=0.6),
        SongSpec(4, "two_note", 3300, 2700, 1.8, share=0.4)),
)

# Confuser kinds per call family: same band, a different shape (a template detector still fires).
_CONFUSER_KINDS = {
    "whistle": ("pulsed_tone", "noise"),
    "sweep": ("rev_sweep", "noise"),
    "two_note": ("tone", "noise"),
    "trill": ("tone", "noise"),
    "harmonic": ("tone", "noise"),
    "croak": ("tone", "clicks"),
}


def species_bands(n_species: int = 24, variation: float = 0.0) -> pd.DataFrame:
    """The template band of every (species, songtype): what the f boxes of its rows say."""
    rows = []
    for sp in SPECIES[:n_species]:
        for s in sp.songs:
            lo, hi = s.template_band(variation)
            rows.append(dict(species_id=sp.species_id, songtype_id=s.songtype_id, shape=s.shape, f_min=lo,
                             f_max=hi, duration_s=s.duration_s))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Individuals: every singer's own version of its species' call (data.variation)
# ----------------------------------------------------------------------------------------------------

# How far an individual's call departs from its species' call at variation 1: each trait is scaled by
# 1 + spread * variation * u, u ~ U(-1, 1) drawn once per individual. Curvature and harmonic gains
# spread wider because every call already jitters them by +/-15% and +/-30% (``_synth_call``), and an
# individual has to stand out of its own calls' jitter.
_VOICE_SPREAD: tuple[tuple[str, float], ...] = (
    ("pitch", 0.09),      # every frequency of the call
    ("duration", 0.2),    # call (note) length
    ("gap", 0.2),         # two_note: gap between the notes
    ("split", 0.2),       # two_note: length of note 1
    ("rate", 0.2),        # fm_rate, pulse_rate (trill rate), am_rate
    ("depth", 0.2),       # fm_depth, am_depth
    ("duty", 0.2),        # trill: pulse duty cycle
    ("end_a", 0.2),       # f_a moved by this share of the span |f_a - f_b| (sweep end points, notes)
    ("end_b", 0.2),       # f_b likewise
    ("curve", 0.3),       # sweep: curvature of the frequency path
)
_VOICE_TRAITS = tuple(name for name, _ in _VOICE_SPREAD)
_HARM_SPREAD = 0.5        # harmonic gains, per harmonic
_MAX_HARM = 12
_N_VOICE_DRAWS = len(_VOICE_SPREAD) + _MAX_HARM
# The traits that move a call's frequency extent: the corners ``_varied_template_band`` visits.
_BAND_TRAITS = ("pitch", "depth", "rate", "duty", "end_a", "end_b")
_P_SECOND_INDIVIDUAL = 0.4    # share of (recording, species) with two singers instead of one
_FREQ_SHAPES = ("sweep", "two_note", "trill", "croak")   # shapes whose f_b is a frequency (has a span)


def _trait_factors(u: np.ndarray, variation: float) -> dict[str, float]:
    """Relative factor of every trait of ``_VOICE_SPREAD`` for the unit draws `u` at `variation`."""
    return {name: 1.0 + spread * variation * float(x) for (name, spread), x in zip(_VOICE_SPREAD, u)}


def _individual_song(song: SongSpec, u: np.ndarray, variation: float) -> SongSpec:
    """One individual's version of `song`, from its unit draws `u` (``_N_VOICE_DRAWS`` values in [-1, 1]).

    Every trait (note lengths, gaps, rates, FM depth, sweep end points, harmonic gains, pitch) moves by
    its own factor, so a template cut from one individual's call no longer fits another's.
    """
    f = _trait_factors(u, variation)
    f_a, f_b = song.f_a, song.f_b
    if song.shape in _FREQ_SHAPES:
        span = abs(f_a - f_b)
        # End points move by a share of the span; a low end never drops below 60% of itself.
        f_a = max(f_a + (f["end_a"] - 1.0) * span, 0.6 * f_a)
        f_b = max(f_b + (f["end_b"] - 1.0) * span, 0.6 * f_b)
    gains = ()
    if song.shape == "harmonic":
        draws = u[len(_VOICE_SPREAD):len(_VOICE_SPREAD) + song.n_harm]
        gains = tuple(song.harm_gain(k + 1) * max(1.0 + _HARM_SPREAD * variation * float(x), 0.1)
                      for k, x in enumerate(draws))
    return dataclasses.replace(
        song, f_a=f_a * f["pitch"], f_b=f_b * f["pitch"], duration_s=song.duration_s * f["duration"],
        fm_depth=song.fm_depth * f["depth"], fm_rate=song.fm_rate * f["rate"],
        pulse_rate=song.pulse_rate * f["rate"], pulse_duty=float(np.clip(song.pulse_duty * f["duty"], 0.2, 0.85)),
        am_rate=song.am_rate * f["rate"], am_depth=min(song.am_depth * f["depth"], 0.95),
        note_scale=song.note_scale * f["split"], gap_scale=song.gap_scale * f["gap"], curve=song.curve * f["curve"],
        harm_gains=gains)


@functools.lru_cache(maxsize=None)
def _varied_template_band(song: SongSpec, variation: float) -> tuple[float, float]:
    """The template band that holds every individual's version of `song` at `variation`.

    Each band trait moves the extent monotonically, so the union over the corners of the trait box
    (2^6 songs) is the exact bound.
    """
    idx = [_VOICE_TRAITS.index(t) for t in _BAND_TRAITS]
    lo, hi = math.inf, -math.inf
    for corner in itertools.product((-1.0, 1.0), repeat=len(idx)):
        u = np.zeros(_N_VOICE_DRAWS)
        u[idx] = corner
        a, b = _individual_song(song, u, variation).template_band()
        lo, hi = min(lo, a), max(hi, b)
    return round(max(lo, 1.0), 2), round(hi, 2)


class _Singers:
    """The individuals of one recording: 1-2 per species (drawn on first use), each with its own song.

    Draws come from the recording's own ``_STREAM_VOICES`` generator, never from the plan's, so
    variation reshapes calls without moving any other draw; a call of an individual still varies a
    little around the individual's song (``_draw_call``, ``_synth_call``).
    """

    def __init__(self, cfg: SyntheticConfig, split: str, index: int):
        self.variation = cfg.variation
        self.rng = _rng(cfg.seed, _SPLIT_CODE[split], index, _STREAM_VOICES)
        self.by_species: dict[int, list[np.ndarray]] = {}

    def song_of(self, species_id: int, song: SongSpec) -> tuple[int, SongSpec]:
        """(individual index, its version of `song`) for one call of `species_id`."""
        if species_id not in self.by_species:
            n = 2 if self.rng.random() < _P_SECOND_INDIVIDUAL else 1
            self.by_species[species_id] = [self._draw() for _ in range(n)]
        own = self.by_species[species_id]
        k = int(self.rng.integers(len(own)))
        return k, _individual_song(song, own[k], self.variation)

    def stranger(self, song: SongSpec) -> SongSpec:
        """A one-off individual's version of `song` (mimicking confusers, other birds)."""
        return _individual_song(song, self._draw(), self.variation)

    def _draw(self) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=_N_VOICE_DRAWS)


def _singers(cfg: SyntheticConfig, split: str, index: int) -> _Singers | None:
    """The recording's individuals, or None at variation 0 (no draws at all: the data of old)."""
    return _Singers(cfg, split, index) if cfg.variation > 0 else None


# ----------------------------------------------------------------------------------------------------
# Plan: events per recording, labels
# ----------------------------------------------------------------------------------------------------

@dataclass
class Event:
    """One sound placed in a recording: a species call (``is_call``), a confuser in a species' band,
    or a distractor (``distractor``: another sound of the forest, species_id -1).

    ``f_min``/``f_max`` are the event's own extent; ``band`` is where its SNR is measured (the
    template band for calls, its own extent widened a little for confusers and distractors).
    ``voice`` is the song it is rendered from when that is not its species' nominal call: an
    individual's version (variation > 0), a one-trait mimic, another bird.
    """

    is_call: bool
    kind: str                 # call shape, or confuser kind
    species_id: int
    songtype_id: int
    t_min: float
    t_max: float
    f_min: float
    f_max: float
    snr_db: float
    pitch: float = 1.0
    f_start: float = 0.0      # confuser tone/sweep start frequency
    f_end: float = 0.0        # confuser sweep end frequency
    rate: float = 0.0         # confuser pulse / click rate
    top_up: bool = False      # added after the presence draw to reach the label counts (train only)
    label: str = "none"       # 'tp' (call in train_tp.csv), 'fp' (confuser in train_fp.csv), 'none'
    voice: SongSpec | None = None   # the song rendered; None: the species' nominal call (or a confuser kind)
    individual: int = 0       # which of the recording's individuals of the species sings it
    call_band: tuple[float, float] | None = None   # calls: the template band at the config's variation
    distractor: bool = False

    @property
    def band(self) -> tuple[float, float]:
        if self.is_call:
            return self.call_band or SPECIES[self.species_id].song(self.songtype_id).template_band()
        return max(self.f_min - 50.0, 1.0), self.f_max + 50.0


@dataclass
class RecordingPlan:
    """Everything needed to render one recording, independent of every other recording."""

    split: str
    index: int
    recording_id: str
    noise_dbfs: float
    noise_alpha: float
    noise_floor_db: float
    insects: list[tuple[float, float, float, float, float, float]]  # f, t0, t1, am_rate, am_depth, snr_db
    rain: tuple[float, float, float, float] | None                   # t0, t1, drops per s, level dB
    events: list[Event] = field(default_factory=list)
    wind: tuple[float, float, float] | None = None     # top Hz, gust rate Hz, level dB re the noise
    clicks: tuple[float, float] | None = None          # clicks per s, level dB re the noise

    def calls_of(self, species_id: int) -> list[Event]:
        return [e for e in self.events if e.is_call and e.species_id == species_id]


@dataclass
class SyntheticPlan:
    """The whole data set before rendering: per-recording plans and the TP/FP tables."""

    config: SyntheticConfig
    train: list[RecordingPlan]
    test: list[RecordingPlan]
    tp: pd.DataFrame
    fp: pd.DataFrame
    stats: dict


def _rng(seed: int, split_code: int, index: int, stream: int) -> np.random.Generator:
    """Independent RNG per (seed, split, recording index, purpose): order- and worker-independent."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), split_code, int(index), stream]))


def _draw_snr(rng: np.random.Generator, diff: DifficultySpec, size: int | None = None):
    """In-band SNR (dB) of calls at a difficulty: a main component plus an optional faint one."""
    n = 1 if size is None else size
    if diff.snr_uniform is not None:
        main = rng.uniform(*diff.snr_uniform, size=n)
    else:
        main = rng.normal(*diff.snr_normal, size=n)
    faint = rng.uniform(*diff.faint_range, size=n)
    pick = rng.random(n) < diff.faint_share
    snr = np.clip(np.where(pick, faint, main), *_SNR_CLIP)
    return float(snr[0]) if size is None else snr


def _max_calls(sp: SpeciesSpec, cfg: SyntheticConfig, diff: DifficultySpec) -> int:
    """Most calls of `sp` in one clip: the level's cap, and where the level says so, no more than its
    longest call fits into ``call_time_share`` of the clip (a 7 s trill is not sung 15 times a minute)."""
    if diff.call_time_share is None:
        return diff.max_calls
    longest = max(s.duration_s for s in sp.songs)
    return max(1, min(diff.max_calls, int(diff.call_time_share * cfg.duration_s / longest)))


def _n_calls(rng: np.random.Generator, sp: SpeciesSpec, cfg: SyntheticConfig, diff: DifficultySpec) -> int:
    """Calls of a present species in one clip: 1 .. ``_max_calls``, species-specific mean (scaled by
    the level's ``calls_factor``)."""
    cap = _max_calls(sp, cfg, diff)
    return 1 + min(int(rng.poisson(max(sp.calls_mean * diff.calls_factor - 1.0, 0.0))), cap - 1)


def _overlaps(a0: float, a1: float, intervals: Sequence[tuple[float, float]], margin: float = 0.0) -> bool:
    return any(a0 < b1 + margin and b0 - margin < a1 for b0, b1 in intervals)


def _pick_song(rng: np.random.Generator, sp: SpeciesSpec) -> SongSpec:
    """One of the species' songtypes, by their shares."""
    shares = np.array([s.share for s in sp.songs])
    return sp.songs[int(rng.choice(len(sp.songs), p=shares / shares.sum()))]


def _free_slot(rng: np.random.Generator, cfg: SyntheticConfig, dur: float,
               avoid: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """A random (t0, t1) of length `dur` that keeps 0.1 s off every interval in `avoid`; None after
    40 tries."""
    for _ in range(40):
        t0 = round(rng.uniform(0.0, cfg.duration_s - dur), 3)
        t1 = round(min(t0 + dur, cfg.duration_s), 3)
        if not _overlaps(t0, t1, avoid, margin=0.1):
            return t0, t1
    return None


def _draw_call(rng: np.random.Generator, cfg: SyntheticConfig, diff: DifficultySpec, sp: SpeciesSpec,
               singers: _Singers | None = None) -> Event:
    """One call of species `sp` at a random time, pitch, duration (+/-15%) and SNR; with `singers`
    (variation > 0) sung by one of the recording's individuals, in its version of the song."""
    song = _pick_song(rng, sp)
    individual, voice = singers.song_of(sp.species_id, song) if singers else (0, song)
    dur = min(voice.duration_s * rng.uniform(0.85, 1.15), cfg.duration_s)
    t0 = round(rng.uniform(0.0, cfg.duration_s - dur), 3)
    t1 = round(min(t0 + dur, cfg.duration_s), 3)
    pitch = 1.0 + rng.uniform(-voice.pitch_var, voice.pitch_var)
    lo, hi = voice.core_band()
    return Event(True, song.shape, sp.species_id, song.songtype_id, t0, t1, round(lo * pitch, 1),
                 round(hi * pitch, 1), round(_draw_snr(rng, diff), 2), pitch=pitch,
                 voice=voice if singers else None, individual=individual,
                 call_band=song.template_band(cfg.variation))


# The mimicking confuser of each call family: the call itself but for one trait.
_MIMIC_KIND = {
    "two_note": "reversed_notes",
    "sweep": "opposite_sweep",
    "trill": "other_pulse_rate",
    "whistle": "vibrato",
    "harmonic": "odd_harmonics",
    "croak": "other_am_rate",
}


def _mimic_song(song: SongSpec, kind: str, factor: float) -> SongSpec:
    """`song` changed in the one trait `kind` names; `factor` (0.5-0.7 or 1.5-2.2) scales a rate."""
    if kind in ("reversed_notes", "opposite_sweep"):
        return dataclasses.replace(song, f_a=song.f_b, f_b=song.f_a)
    if kind == "other_pulse_rate":
        return dataclasses.replace(song, pulse_rate=song.pulse_rate * factor)
    if kind == "other_am_rate":
        return dataclasses.replace(song, am_rate=song.am_rate * factor)
    if kind == "vibrato":      # a fast, clear vibrato where the call has a slow warble
        return dataclasses.replace(song, fm_rate=max(3.0 * song.fm_rate, 12.0) * factor ** 0.25,
                                   fm_depth=max(song.fm_depth, 0.012))
    if kind == "odd_harmonics":
        return dataclasses.replace(song, harm_gains=tuple(song.harm_gain(k) if k % 2 else 0.0
                                                          for k in range(1, song.n_harm + 1)))
    raise ValueError(f"unknown mimic kind {kind!r}")


def _draw_mimic(rng: np.random.Generator, cfg: SyntheticConfig, diff: DifficultySpec, song: SongSpec,
                species_id: int, avoid: Sequence[tuple[float, float]], singers: _Singers | None) -> Event | None:
    """A confuser that is `song` but for one trait (``_MIMIC_KIND``), sung by a stranger: a template
    of the call still fits it well, only the trait tells them apart. None if no free slot."""
    kind = _MIMIC_KIND[song.shape]
    factor = rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.2)
    voice = _mimic_song(singers.stranger(song) if singers else song, kind, factor)
    dur = min(voice.duration_s * rng.uniform(0.85, 1.15), cfg.duration_s)
    pitch = 1.0 + rng.uniform(-voice.pitch_var, voice.pitch_var)
    snr = round(_draw_snr(rng, diff) + diff.confuser_snr_offset, 2)
    slot = _free_slot(rng, cfg, dur, avoid)
    if slot is None:
        return None
    lo, hi = voice.core_band()
    return Event(False, kind, species_id, song.songtype_id, *slot, round(lo * pitch, 1), round(hi * pitch, 1),
                 snr, pitch=pitch, rate=factor, voice=voice)


def _draw_confuser(rng: np.random.Generator, cfg: SyntheticConfig, diff: DifficultySpec, sp: SpeciesSpec,
                   avoid: Sequence[tuple[float, float]] = (), singers: _Singers | None = None) -> Event | None:
    """A confuser in the band of `sp`: a different shape at a different duration, or (a share
    ``mimic_share`` of them) a one-trait mimic of the call; None if no time slot avoiding `avoid` (the
    species' own calls) was found."""
    song = _pick_song(rng, sp)
    kinds = _CONFUSER_KINDS[song.shape]
    kind = kinds[int(rng.integers(len(kinds)))]
    if diff.mimic_share > 0 and rng.random() < diff.mimic_share:
        return _draw_mimic(rng, cfg, diff, song, sp.species_id, avoid, singers)
    lo_f, hi_f = song.template_band(cfg.variation)
    width = hi_f - lo_f
    ranges = diff.confuser_dur_factor
    lo_d, hi_d = ranges[int(rng.integers(len(ranges)))]
    dur = float(np.clip(song.duration_s * rng.uniform(lo_d, hi_d), 0.2, min(8.0, cfg.duration_s)))
    snr = round(_draw_snr(rng, diff) + diff.confuser_snr_offset, 2)
    f_start = f_end = rate = 0.0
    if kind in ("tone", "pulsed_tone"):
        f_start = f_end = rng.uniform(lo_f + 0.15 * width, hi_f - 0.15 * width)
        f_min, f_max = f_start - 15.0, f_start + 15.0
        rate = rng.uniform(3.0, 8.0) if kind == "pulsed_tone" else 0.0
    elif kind == "rev_sweep":
        span = width * rng.uniform(0.4, 0.8)
        a = rng.uniform(lo_f, hi_f - span)
        down = song.f_a > song.f_b
        f_start, f_end = (a, a + span) if down else (a + span, a)
        f_min, f_max = a, a + span
    else:  # noise / clicks: a sub-band
        sub = max(width * rng.uniform(0.35, 0.8), min(60.0, width))
        f_min = rng.uniform(lo_f, hi_f - sub)
        f_max = f_min + sub
        rate = rng.uniform(15.0, 60.0) if kind == "clicks" else 0.0
    slot = _free_slot(rng, cfg, dur, avoid)
    if slot is None:
        return None
    return Event(False, kind, sp.species_id, song.songtype_id, *slot, round(f_min, 1), round(f_max, 1),
                 snr, f_start=f_start, f_end=f_end, rate=rate)


# Distractors: other sounds of the forest, not one of the species, anywhere in frequency.
_DISTRACTOR_KINDS = ("bird", "frog", "hum", "clicks")
_DISTRACTOR_SHARES = (0.45, 0.2, 0.15, 0.2)
_ALL_SONGS = tuple(s for sp in SPECIES for s in sp.songs)


def _distractor_song(rng: np.random.Generator, kind: str, sample_rate: int) -> SongSpec:
    """The song of a distractor: another bird (a species' call moved out of its band by 0.5-0.75x or
    1.3-1.8x), a frog (pulsed noise, 0.2-1.5 kHz) or a far engine (low harmonic hum, 2-8 s)."""
    if kind == "bird":
        base = _ALL_SONGS[int(rng.integers(len(_ALL_SONGS)))]
        up = rng.random() < 0.5 and base.core_band()[1] * 1.8 < 0.4 * sample_rate
        shift = rng.uniform(1.3, 1.8) if up else rng.uniform(0.5, 0.75)
        return dataclasses.replace(base, songtype_id=0, f_a=base.f_a * shift, f_b=base.f_b * shift)
    if kind == "frog":
        f_lo = rng.uniform(200.0, 1500.0)
        return SongSpec(0, "croak", f_lo, f_lo * rng.uniform(1.5, 3.0), rng.uniform(0.2, 1.5),
                        am_rate=rng.uniform(5.0, 60.0), am_depth=rng.uniform(0.5, 0.9))
    if kind == "hum":
        return SongSpec(0, "harmonic", rng.uniform(60.0, 250.0), 0.0, rng.uniform(2.0, 8.0), fm_depth=0.004,
                        fm_rate=0.3, n_harm=int(rng.integers(4, 9)))
    raise ValueError(f"distractor kind {kind!r} has no song")


def _draw_distractor(rng: np.random.Generator, cfg: SyntheticConfig, diff: DifficultySpec,
                     singers: _Singers | None) -> Event:
    """One distractor (``_DISTRACTOR_KINDS``) at a random time and SNR; its song varies like a
    stranger's at variation > 0; 'clicks' is a short broadband crackle (twigs, a falling branch)."""
    kind = _DISTRACTOR_KINDS[int(rng.choice(len(_DISTRACTOR_KINDS), p=_DISTRACTOR_SHARES))]
    voice, rate, pitch = None, 0.0, 1.0
    if kind == "clicks":
        lo, hi = rng.uniform(200.0, 2000.0), rng.uniform(6000.0, 0.42 * cfg.sample_rate)
        dur, rate = rng.uniform(0.05, 0.5), rng.uniform(20.0, 120.0)
    else:
        voice = _distractor_song(rng, kind, cfg.sample_rate)
        voice = singers.stranger(voice) if singers else voice
        dur = min(voice.duration_s * rng.uniform(0.85, 1.15), cfg.duration_s)
        pitch = 1.0 + rng.uniform(-voice.pitch_var, voice.pitch_var)
        lo, hi = (f * pitch for f in voice.core_band())
    t0 = round(rng.uniform(0.0, cfg.duration_s - dur), 3)
    t1 = round(min(t0 + dur, cfg.duration_s), 3)
    snr = round(_draw_snr(rng, diff) + diff.confuser_snr_offset, 2)
    return Event(False, kind, -1, 0, t0, t1, round(lo, 1), round(hi, 1), snr, pitch=pitch, rate=rate,
                 voice=voice, distractor=True)


def _plan_scene_extras(plan: RecordingPlan, cfg: SyntheticConfig, diff: DifficultySpec,
                       singers: _Singers | None) -> None:
    """Wind, clicks and distractors of one recording (levels that have them), from the recording's own
    ``_STREAM_SCENE`` generator, so the rest of its plan is drawn as at the level it builds on."""
    if not (diff.p_wind or diff.p_clicks or diff.distractor_rate):
        return
    rng = _rng(cfg.seed, _SPLIT_CODE[plan.split], plan.index, _STREAM_SCENE)
    if rng.random() < diff.p_wind:
        plan.wind = (rng.uniform(150.0, 800.0), rng.uniform(0.05, 0.4), rng.uniform(-6.0, 8.0))
    if rng.random() < diff.p_clicks:
        plan.clicks = (rng.uniform(0.3, 3.0), rng.uniform(-10.0, 0.0))
    plan.events.extend(_draw_distractor(rng, cfg, diff, singers) for _ in range(int(rng.poisson(diff.distractor_rate))))


def _plan_recording(cfg: SyntheticConfig, diff: DifficultySpec, split: str, index: int,
                    recording_id: str, singers: _Singers | None = None) -> RecordingPlan:
    """Background, present species with their calls, confusers and (realistic) distractors of one
    recording; `singers` are its individuals (None at variation 0)."""
    rng = _rng(cfg.seed, _SPLIT_CODE[split], index, _STREAM_PLAN)
    dur = cfg.duration_s
    noise_dbfs, alpha, floor_db = rng.uniform(-45, -30), rng.uniform(0.8, 1.7), rng.uniform(-30, -18)
    insects = []
    if rng.random() < diff.p_insects:
        for _ in range(int(rng.integers(*diff.insect_count))):
            f = rng.uniform(4000.0, min(13000.0, 0.4 * cfg.sample_rate))
            length = rng.uniform(10.0, min(50.0, dur))
            t0 = rng.uniform(0.0, dur - length)
            insects.append((f, t0, t0 + length, rng.uniform(15, 90), rng.uniform(0.3, 0.9), rng.uniform(3, 15)))
    rain = None
    if rng.random() < diff.p_rain:
        length = rng.uniform(10.0, dur)
        t0 = rng.uniform(0.0, dur - length)
        rain = (t0, t0 + length, rng.uniform(30.0, 200.0), rng.uniform(-8.0, 4.0))
    plan = RecordingPlan(split, index, recording_id, noise_dbfs, alpha, floor_db, insects, rain)
    prior = np.asarray(RFCX_TEST_PRIOR[:cfg.n_species])
    present = np.flatnonzero(rng.random(cfg.n_species) < prior)
    for k in present:
        sp = SPECIES[k]
        plan.events.extend(_draw_call(rng, cfg, diff, sp, singers) for _ in range(_n_calls(rng, sp, cfg, diff)))
    n_conf = rng.poisson(diff.confuser_rate, size=cfg.n_species)
    for k in range(cfg.n_species):
        if k % 3 >= diff.confuser_bands:
            continue          # no natural confusers in this band (train top-ups still carry its FP rows)
        for _ in range(int(n_conf[k])):
            event = _draw_confuser(rng, cfg, diff, SPECIES[k], singers=singers)
            if event is not None:
                plan.events.append(event)
    _plan_scene_extras(plan, cfg, diff, singers)
    return plan


def _recording_ids(cfg: SyntheticConfig) -> tuple[list[str], list[str]]:
    """Unique 9-hex-character ids for train and test, each sorted.

    A few are all digits with leading zeros (like RFCx's ``000316000``) so a reader that lets pandas
    parse ids as numbers loses the zeros and fails visibly instead of only on the real data.
    """
    rng = _rng(cfg.seed, 0, 0, _STREAM_IDS)
    n = cfg.n_train + cfg.n_test
    n_digit = max(2, int(round(0.04 * n)))
    digit_at = {0, cfg.n_train} | {int(i) for i in rng.choice(n, size=min(n, n_digit), replace=False)}
    seen: set[str] = set()
    ids = []
    for i in range(n):
        while True:
            if i in digit_at:
                rid = "000" + f"{int(rng.integers(0, 10 ** 6)):06d}"
            else:
                rid = f"{int(rng.integers(0, 16 ** 9)):09x}"
            if rid not in seen:
                break
        seen.add(rid)
        ids.append(rid)
    return sorted(ids[:cfg.n_train]), sorted(ids[cfg.n_train:])


def _detector_weight(snr_db: np.ndarray, centre_width: tuple[float, float] = (4.0, 3.0)) -> np.ndarray:
    """How likely a template detector (the source of RFCx boxes) picks an event: louder is likelier,
    by a logistic of (centre, width) dB (``DifficultySpec.detector_snr``; wide = barely prefers loud)."""
    centre, width = centre_width
    return 1.0 / (1.0 + np.exp(-(np.asarray(snr_db, dtype=np.float64) - centre) / width)) + 0.02


def _top_up(train: list[RecordingPlan], cfg: SyntheticConfig, diff: DifficultySpec,
            singers: Sequence[_Singers | None]) -> dict:
    """Add calls / confusers to train recordings until every species can get its TP and FP rows.

    Rare species (prior 0.4%) have almost no calls in 120 clips, yet the labels are balanced per
    species, as in RFCx whose train recordings were picked where detectors fired. Each species needs
    ``_CALLS_PER_TP`` x tp_per_species calls (so TP rows can favour loud ones and stay a minority of the
    calls, leaving work for pseudo labels) and fp rows worth of confusers that do not overlap its calls.
    `singers` are the individuals of each train recording (by index), who sing the added calls too.
    """
    rng = _rng(cfg.seed, 0, 0, _STREAM_TOPUP)
    need_calls = _CALLS_PER_TP * cfg.tp_per_species
    need_fp = _n_fp(cfg)
    extra_calls, extra_confusers = [0] * cfg.n_species, [0] * cfg.n_species
    for k in range(cfg.n_species):
        sp = SPECIES[k]
        have = sum(len(p.calls_of(k)) for p in train)
        while have < need_calls:
            absent = [i for i, p in enumerate(train) if not p.calls_of(k)]
            plan = train[int(rng.choice(absent))] if absent else train[int(rng.integers(len(train)))]
            for _ in range(_n_calls(rng, sp, cfg, diff)):
                event = _draw_call(rng, cfg, diff, sp, singers[plan.index])
                event.top_up = True
                plan.events.append(event)
                have += 1
                extra_calls[k] += 1
    for k in range(cfg.n_species):
        sp = SPECIES[k]
        have = len(_eligible_confusers(train, k))
        attempts = 0
        while have < need_fp and attempts < 50 * need_fp + 100:
            attempts += 1
            plan = train[int(rng.integers(len(train)))]
            avoid = [(e.t_min, e.t_max) for e in plan.calls_of(k)]
            event = _draw_confuser(rng, cfg, diff, sp, avoid=avoid, singers=singers[plan.index])
            if event is not None:
                event.top_up = True
                plan.events.append(event)
                have += 1
                extra_confusers[k] += 1
    return {"extra_calls": extra_calls, "extra_confusers": extra_confusers}


def _n_fp(cfg: SyntheticConfig) -> int:
    return int(round(cfg.fp_per_tp * cfg.tp_per_species))


def _eligible_confusers(train: list[RecordingPlan], species_id: int) -> list[tuple[RecordingPlan, Event]]:
    """Confusers in the band of `species_id` that no call of that species overlaps in time."""
    out = []
    for plan in train:
        calls = [(e.t_min, e.t_max) for e in plan.calls_of(species_id)]
        for e in plan.events:
            if not e.is_call and e.species_id == species_id and not _overlaps(e.t_min, e.t_max, calls, 0.05):
                out.append((plan, e))
    return out


def _select_labels(train: list[RecordingPlan], cfg: SyntheticConfig,
                   diff: DifficultySpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pick the TP calls and FP confusers (louder ones likelier, as the level's detector prefers them)
    and build the two annotation tables; boxes span the template band at the config's variation."""
    rng = _rng(cfg.seed, 0, 1, _STREAM_TOPUP)
    tp_rows, fp_rows = [], []
    dur = cfg.duration_s
    for k in range(cfg.n_species):
        calls = [(p, e) for p in train for e in p.calls_of(k)]
        weights = _detector_weight([e.snr_db for _, e in calls], diff.detector_snr)
        chosen = rng.choice(len(calls), size=cfg.tp_per_species, replace=False, p=weights / weights.sum())
        for i in sorted(chosen):
            plan, e = calls[i]
            e.label = "tp"
            t0 = float(np.clip(e.t_min + rng.uniform(-0.03, 0.03), 0.0, dur))
            t1 = float(np.clip(e.t_max + rng.uniform(-0.03, 0.03), 0.0, dur))
            if t1 - t0 < 0.05:
                t0, t1 = e.t_min, e.t_max
            f0, f1 = SPECIES[k].song(e.songtype_id).template_band(cfg.variation)
            tp_rows.append((plan.recording_id, k, e.songtype_id, round(t0, 3), f0, round(t1, 3), f1))
        confusers = _eligible_confusers(train, k)
        n_fp = min(_n_fp(cfg), len(confusers))
        if n_fp:
            weights = _detector_weight([e.snr_db for _, e in confusers], diff.detector_snr)
            chosen = rng.choice(len(confusers), size=n_fp, replace=False, p=weights / weights.sum())
            for i in sorted(chosen):
                plan, e = confusers[i]
                e.label = "fp"
                f0, f1 = SPECIES[k].song(e.songtype_id).template_band(cfg.variation)
                fp_rows.append((plan.recording_id, k, e.songtype_id, e.t_min, f0, e.t_max, f1))
    tp = pd.DataFrame(tp_rows, columns=ANNOTATION_COLUMNS)
    fp = pd.DataFrame(fp_rows, columns=ANNOTATION_COLUMNS)
    order = ["recording_id", "t_min", "species_id"]
    return (tp.sort_values(order, kind="stable").reset_index(drop=True),
            fp.sort_values(order, kind="stable").reset_index(drop=True))


def plan_dataset(config: SyntheticConfig = SyntheticConfig()) -> SyntheticPlan:
    """The complete data set without audio (fast): recordings, events, TP/FP rows and statistics.

    ``generate`` renders exactly this plan; tests and notebooks use it to study label statistics of
    large configurations without paying for audio.
    """
    cfg = _resolve(config)
    diff = DIFFICULTIES[cfg.difficulty]
    train_ids, test_ids = _recording_ids(cfg)
    train_singers = [_singers(cfg, "train", i) for i in range(len(train_ids))]
    train = [_plan_recording(cfg, diff, "train", i, rid, train_singers[i]) for i, rid in enumerate(train_ids)]
    test = [_plan_recording(cfg, diff, "test", i, rid, _singers(cfg, "test", i)) for i, rid in enumerate(test_ids)]
    extras = _top_up(train, cfg, diff, train_singers)
    tp, fp = _select_labels(train, cfg, diff)
    for plans in (train, test):
        for p in plans:
            p.events.sort(key=lambda e: (not e.is_call, e.t_min, e.species_id, e.kind))
    plan = SyntheticPlan(cfg, train, test, tp, fp, {})
    plan.stats = _stats(plan, extras)
    return plan


# ----------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# Render: audio of one recording
# ----------------------------------------------------------------------------------------------------

def _fade(n: int, ramp: int) -> np.ndarray:
    """Ones with raised-cosine ramps at both ends: clicks at onsets would smear energy over all bands."""
    env = np.ones(n)
    ramp = max(1, min(ramp, n // 2))
    r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    env[:ramp] = r
    env[n - ramp:] = r[::-1]
    return env


def _phase(freq: np.ndarray, sr: int, phase0: float) -> np.ndarray:
    """Phase of a tone following the instantaneous frequency `freq` (Hz per sample)."""
    return phase0 + 2.0 * np.pi * np.cumsum(freq) / sr


def _band_noise(n: int, sr: int, lo: float, hi: float, rng: np.random.Generator, edge_hz: float = 20.0) -> np.ndarray:
    """Noise in [lo, hi] with soft edges, unit RMS: random spectrum on the band's bins only, one irfft."""
    n_fft = sfft.next_fast_len(n, real=True)
    k0 = max(int(np.floor((lo - edge_hz) * n_fft / sr)), 1)
    k1 = min(int(np.ceil((hi + edge_hz) * n_fft / sr)) + 1, n_fft // 2 + 1)
    k1 = max(k1, k0 + 1)
    f = np.arange(k0, k1) * sr / n_fft
    mask = np.clip((f - (lo - edge_hz)) / (2 * edge_hz), 0, 1) * np.clip(((hi + edge_hz) - f) / (2 * edge_hz), 0, 1)
    spec = np.zeros(n_fft // 2 + 1, dtype=np.complex128)
    spec[k0:k1] = (rng.standard_normal(k1 - k0) + 1j * rng.standard_normal(k1 - k0)) * np.maximum(mask, 1e-3)
    x = sfft.irfft(spec, n_fft)[:n]
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-30)


def _synth_call(song: SongSpec, n: int, sr: int, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """One call of `song` with `n` samples, at relative `pitch`; per-call details vary with `rng`."""
    t = np.arange(n) / sr
    length = n / sr
    u = t / length
    ph0 = rng.uniform(0, 2 * np.pi)
    if song.shape == "whistle":
        drift = rng.uniform(-1, 1)
        rate = song.fm_rate * rng.uniform(0.9, 1.1)
        vibrato = np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
        rel = song.fm_depth * (0.7 * vibrato + 0.3 * drift * (2 * u - 1))
        x = np.sin(_phase(pitch * song.f_a * (1 + rel), sr, ph0)) * _fade(n, int(0.04 * sr))
    elif song.shape == "sweep":
        gamma = rng.uniform(0.85, 1.15) * song.curve
        freq = pitch * song.f_a * (song.f_b / song.f_a) ** (u ** gamma)
        x = np.sin(_phase(freq, sr, ph0)) * _fade(n, int(0.02 * sr))
    elif song.shape == "two_note":
        end1 = rng.uniform(0.37, 0.43) * song.note_scale
        start2 = end1 + rng.uniform(0.12, 0.2) * song.gap_scale
        freq = pitch * np.where(u < end1, song.f_a, song.f_b) * (1 + 0.005 * np.sin(2 * np.pi * 7 * t))
        env = np.zeros(n)
        n1, n2 = int(end1 * n), int(start2 * n)
        env[:n1] = _fade(n1, int(0.015 * sr))
        env[n2:] = _fade(n - n2, int(0.015 * sr))
        x = np.sin(_phase(freq, sr, ph0)) * env
    elif song.shape == "trill":
        rate = song.pulse_rate * rng.uniform(0.93, 1.07)
        pos = (t * rate) % 1.0
        within = np.clip(pos / song.pulse_duty, 0, 1)
        freq = pitch * (song.f_b + (song.f_a - song.f_b) * within)
        env = np.where(pos < song.pulse_duty, np.sin(np.pi * within) ** 2, 0.0) * _fade(n, int(0.1 * sr))
        x = np.sin(_phase(freq, sr, ph0)) * env
    elif song.shape == "harmonic":
        f0 = pitch * song.f_a * (1 + song.fm_depth * np.sin(2 * np.pi * song.fm_rate * t + rng.uniform(0, 2 * np.pi)))
        base = _phase(f0, sr, ph0)
        x = np.zeros(n)
        for k in range(1, song.n_harm + 1):
            x += k ** -0.7 * song.harm_gain(k) * rng.uniform(0.7, 1.3) * np.sin(k * base + rng.uniform(0, 2 * np.pi))
        x *= _fade(n, int(0.04 * sr))
    elif song.shape == "croak":
        am = 1 - song.am_depth + song.am_depth * (0.5 + 0.5 * np.sin(2 * np.pi * song.am_rate * t + ph0))
        x = _band_noise(n, sr, pitch * song.f_a, pitch * song.f_b, rng) * am * _fade(n, int(0.03 * sr))
    else:
        raise ValueError(f"unknown call shape {song.shape!r}")
    return x


def _synth_confuser(e: Event, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One confuser event: tone bursts, pulsed tones, noise bursts, reversed sweeps or click trains."""
    t = np.arange(n) / sr
    ph0 = rng.uniform(0, 2 * np.pi)
    if e.kind == "tone":
        return np.sin(2 * np.pi * e.f_start * t + ph0) * _fade(n, int(0.005 * sr))
    if e.kind == "pulsed_tone":
        gate = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * e.rate * t))
        return np.sin(2 * np.pi * e.f_start * t + ph0) * gate * _fade(n, int(0.005 * sr))
    if e.kind == "rev_sweep":
        freq = e.f_start + (e.f_end - e.f_start) * t / (n / sr)
        return np.sin(_phase(freq, sr, ph0)) * _fade(n, int(0.02 * sr))
    if e.kind == "noise":
        return _band_noise(n, sr, e.f_min, e.f_max, rng) * _fade(n, int(0.05 * sr))
    if e.kind == "clicks":
        x = np.zeros(n)
        period = sr / e.rate
        pos = (np.arange(0, n - 1, period) + rng.uniform(-0.2, 0.2, size=int(math.ceil((n - 1) / period))) * period)
        pos = np.clip(pos.astype(np.int64), 0, n - 1)
        x[pos] = rng.choice([-1.0, 1.0], size=pos.size) * rng.uniform(0.5, 1.0, size=pos.size)
        n_fft = sfft.next_fast_len(n, real=True)
        spec = sfft.rfft(x, n_fft)
        f = np.arange(spec.size) * sr / n_fft
        spec[(f < e.f_min) | (f > e.f_max)] = 0
        return sfft.irfft(spec, n_fft)[:n] * _fade(n, int(0.01 * sr))
    raise ValueError(f"unknown confuser kind {e.kind!r}")


def _synth_event(e: Event, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The waveform of one event: from its own song if it has one (an individual's call, a mimic, a
    distractor), else its species' call or its confuser kind."""
    if e.voice is not None:
        return _synth_call(e.voice, n, sr, e.pitch, rng)
    if e.is_call:
        return _synth_call(SPECIES[e.species_id].song(e.songtype_id), n, sr, e.pitch, rng)
    return _synth_confuser(e, n, sr, rng)


def _add_echo(mix: np.ndarray, wave: np.ndarray, s0: int, sr: int, rng: np.random.Generator) -> None:
    """Add a reflection of `wave` (placed at `s0`) off trees or ground: 20-200 ms later, 6-15 dB down."""
    start = s0 + int(rng.uniform(0.02, 0.2) * sr)
    gain = np.float32(10 ** (rng.uniform(-15.0, -6.0) / 20))
    end = min(start + wave.size, mix.size)
    if end > start:
        mix[start:end] += wave[:end - start] * gain


class _BandPowerMap:
    """Power of the background per frequency bin in ~0.17 s frames (Hann, no overlap).

    Scaling each event to its SNR needs the background's power in the event's band and time span; one
    batched FFT over the whole recording answers all ~40 queries of a recording, where one FFT per event
    cost most of the render time. The Hann window keeps the strong low-frequency noise out of high bands.
    """

    def __init__(self, x: np.ndarray, sr: int, frame: int = 8192):
        self.sr, self.frame = sr, frame
        n_frames = max(x.size // frame, 1)
        window = (0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(frame) + 0.5) / frame)).astype(np.float32)
        frames = np.zeros((n_frames, frame), dtype=np.float32)
        used = min(x.size, n_frames * frame)
        frames.reshape(-1)[:used] = x[:used]
        spec = sfft.rfft(frames * window, axis=-1)
        power = spec.real.astype(np.float64) ** 2 + spec.imag.astype(np.float64) ** 2
        # Cumulative over bins (with a leading 0) so a band sum is one subtraction.
        self.cum = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(power, axis=1)], axis=1)
        # One-sided spectrum of a windowed frame -> mean power of the signal (Parseval).
        self.scale = 2.0 / (frame * float(np.sum(window.astype(np.float64) ** 2)))

    def band_power(self, s0: int, s1: int, lo: float, hi: float) -> float:
        """Mean power in [lo, hi] Hz over the frames centred in samples [s0, s1) (nearest frame if none)."""
        n_frames = self.cum.shape[0]
        centres = np.arange(n_frames) * self.frame + self.frame / 2
        idx = np.flatnonzero((centres >= s0) & (centres < s1))
        if idx.size == 0:
            idx = np.array([int(np.clip(np.argmin(np.abs(centres - 0.5 * (s0 + s1))), 0, n_frames - 1))])
        k0 = int(np.ceil(lo * self.frame / self.sr))
        k1 = int(np.floor(hi * self.frame / self.sr))
        if k1 < k0:
            k0 = k1 = int(round(0.5 * (lo + hi) * self.frame / self.sr))
        k1 = min(k1, self.cum.shape[1] - 2)
        return float(np.mean(self.cum[idx, k1 + 1] - self.cum[idx, k0])) * self.scale


@functools.lru_cache(maxsize=4)
def _noise_grid(n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Per rfft bin: log(max(f, 20 Hz) / 1 kHz), and the alpha-independent gain (40 Hz low cut times an
    anti-aliasing roll-off near Nyquist); float32, shared by all recordings a worker renders, so the
    1/f^alpha shape costs one exp per bin instead of a pow."""
    f = np.arange(n // 2 + 1, dtype=np.float32) * np.float32(sr / n)
    fc = np.maximum(f, np.float32(20.0))
    gain = 1.0 / ((1.0 + (np.float32(40.0) / fc) ** 4) * (1.0 + (f / np.float32(0.46 * sr)) ** 16))
    gain[0] = 0.0
    return np.log(fc / np.float32(1000.0)), gain.astype(np.float32)


def _noise_shape(n: int, sr: int, alpha: float, floor_db: float) -> np.ndarray:
    """Power spectrum (rfft bins, sums to 1) of the ambient noise: 1/f^alpha plus a white floor
    `floor_db` below it, low cut at 40 Hz, rolled off near Nyquist."""
    log_f, gain = _noise_grid(n, sr)
    col = np.exp(np.float32(-alpha) * log_f)
    col *= np.float32(1.0 / col.sum(dtype=np.float64))
    col += np.float32(10 ** (floor_db / 10) / col.size)
    col *= gain
    col *= np.float32(1.0 / col.sum(dtype=np.float64))
    return col


def _insect(n: int, sr: int, f: float, am_rate: float, am_depth: float, level: float,
            rng: np.random.Generator) -> np.ndarray:
    """A steady insect tone with fast AM and 0.2% slow FM (float32; tens of seconds long).

    The carrier phase is reduced to cycles in float64 first (float32 cannot hold 4e6 radians), the rest
    is float32, since these tones span millions of samples.
    """
    cycles = (f / sr) * np.arange(n, dtype=np.float64)
    carrier = (cycles - np.floor(cycles)).astype(np.float32) * np.float32(2 * np.pi)
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    eps, r = 0.002, 0.2      # FM integrated analytically: - (f eps / r) cos(2 pi r t + phi)
    carrier -= np.float32(f * eps / r) * np.cos(np.float32(2 * np.pi * r) * t + np.float32(rng.uniform(0, 6.3)))
    am = np.sin(np.float32(2 * np.pi * am_rate) * t + np.float32(rng.uniform(0, 6.3)))
    am = np.float32(1 - am_depth / 2) + np.float32(am_depth / 2) * am
    out = np.sin(carrier + np.float32(rng.uniform(0, 6.3)))
    out *= am
    out *= _fade(n, sr).astype(np.float32)
    out *= np.float32(level)
    return out


def _background(plan: RecordingPlan, n: int, sr: int, rng: np.random.Generator,
                scene_rng: np.random.Generator) -> np.ndarray:
    """Ambient colored noise (random spectrum shaped by 1/f^alpha, one irfft), insect tones, rain, and
    (realistic) wind and clicks of one recording (float32); wind and clicks draw from `scene_rng`."""
    shape = _noise_shape(n, sr, plan.noise_alpha, plan.noise_floor_db)
    amp = np.sqrt(shape)
    spec = np.empty(amp.size, dtype=np.complex64)
    spec.real = rng.standard_normal(amp.size, dtype=np.float32) * amp
    spec.imag = rng.standard_normal(amp.size, dtype=np.float32) * amp
    x = sfft.irfft(spec, n)
    noise_rms = 10 ** (plan.noise_dbfs / 20)
    x *= np.float32(noise_rms / (np.sqrt(float(np.dot(x, x)) / n) + 1e-20))
    for f, t0, t1, am_rate, am_depth, snr_db in plan.insects:
        s0, s1 = int(t0 * sr), min(int(t1 * sr), n)
        k0, k1 = int((f - 200) * n / sr), int((f + 200) * n / sr) + 1
        band_power = noise_rms ** 2 * float(shape[k0:k1].sum(dtype=np.float64))
        mean_am2 = (1 - am_depth / 2) ** 2 + (am_depth / 2) ** 2 / 2
        level = np.sqrt(2 * band_power * 10 ** (snr_db / 10) / mean_am2)
        x[s0:s1] += _insect(s1 - s0, sr, f, am_rate, am_depth, level, rng)
    if plan.rain is not None:
        x += _rain(plan.rain, n, sr, noise_rms, rng).astype(np.float32)
    if plan.wind is not None:
        x += _wind(plan.wind, n, sr, noise_rms, scene_rng)
    if plan.clicks is not None:
        x += _clicks(plan.clicks, n, sr, noise_rms, scene_rng)
    return x


def _impulses(n: int, sr: int, s0: int, s1: int, n_hits: int, kernel_s: float, tau_s: tuple[float, float],
              rng: np.random.Generator) -> np.ndarray:
    """`n_hits` decaying noise bursts (`kernel_s` long, decay time U(tau_s) s) at random samples in
    [s0, s1), differentiated: bright, as rain drops and twig clicks have little low-frequency energy."""
    kernel_len = int(kernel_s * sr)
    pos = rng.integers(s0, max(s0 + 1, s1 - kernel_len), size=n_hits)
    tau = rng.uniform(tau_s[0], tau_s[1], size=(n_hits, 1)) * sr
    amps = rng.lognormal(0.0, 0.8, size=(n_hits, 1))
    k = np.arange(kernel_len)
    bursts = amps * np.exp(-k / tau) * rng.standard_normal((n_hits, kernel_len))
    idx = (pos[:, None] + k).ravel()
    out = np.bincount(idx, weights=bursts.ravel(), minlength=n)[:n]
    out[1:] = np.diff(out)
    return out


def _rain(rain: tuple[float, float, float, float], n: int, sr: int, noise_rms: float,
          rng: np.random.Generator) -> np.ndarray:
    """Broadband impulsive rain: decaying noise bursts (drops) at random times, faded in and out."""
    t0, t1, rate, level_db = rain
    s0, s1 = int(t0 * sr), min(int(t1 * sr), n)
    n_drops = int(rng.poisson(rate * (t1 - t0)))
    out = np.zeros(n)
    if n_drops == 0 or s1 - s0 < 2 * sr:
        return out
    out = _impulses(n, sr, s0, s1, n_drops, 0.005, (0.0002, 0.0012), rng)
    seg = out[s0:s1]
    rms = np.sqrt(np.mean(seg ** 2)) + 1e-20
    out *= noise_rms * 10 ** (level_db / 20) / rms
    out[s0:s1] *= _fade(s1 - s0, 2 * sr)
    return out


def _wind(wind: tuple[float, float, float], n: int, sr: int, noise_rms: float,
          rng: np.random.Generator) -> np.ndarray:
    """Wind: low-frequency noise (20 Hz .. `top`) in gusts, a slow random envelope of three
    sinusoids around `gust_rate`, evaluated every 10 ms and interpolated linearly (float32)."""
    top, gust_rate, level_db = wind
    x = _band_noise(n, sr, 20.0, top, rng, edge_hz=40.0).astype(np.float32)
    hop = sr // 100
    t = np.arange(n // hop + 2) * (hop / sr)
    slow = sum(np.sin(2 * np.pi * gust_rate * m * t + rng.uniform(0, 2 * np.pi)) for m in (1.0, 1.7, 2.9))
    env = np.exp(0.7 * slow)
    env *= noise_rms * 10 ** (level_db / 20) / np.sqrt(np.mean(env ** 2))
    frac = (np.arange(hop) / hop).astype(np.float32)
    steps = env.astype(np.float32)
    fine = (steps[:-1, None] * (1 - frac) + steps[1:, None] * frac).reshape(-1)[:n]
    x *= fine
    return x


def _clicks(clicks: tuple[float, float], n: int, sr: int, noise_rms: float,
            rng: np.random.Generator) -> np.ndarray:
    """Sparse broadband clicks over the whole recording (twigs, drips, handling): sharper and rarer
    than rain drops; `level_db` is their RMS re the noise (float32)."""
    rate, level_db = clicks
    n_hits = int(rng.poisson(rate * n / sr))
    if n_hits == 0:
        return np.zeros(n, dtype=np.float32)
    out = _impulses(n, sr, 0, n, n_hits, 0.008, (0.0003, 0.002), rng)
    out *= noise_rms * 10 ** (level_db / 20) / (np.sqrt(np.mean(out ** 2)) + 1e-20)
    return out.astype(np.float32)


def _render(plan: RecordingPlan, cfg: SyntheticConfig) -> np.ndarray:
    """The int16 audio of one recording.

    Each event is scaled to its planned in-band SNR against the background (noise, insects, rain; not
    other events) in its own time span. Events are band-limited by construction, so their in-band
    power is their mean power.
    """
    sr = cfg.sample_rate
    n = int(round(cfg.duration_s * sr))
    diff = DIFFICULTIES[cfg.difficulty]
    rng = _rng(cfg.seed, _SPLIT_CODE[plan.split], plan.index, _STREAM_AUDIO)
    scene_rng = _rng(cfg.seed, _SPLIT_CODE[plan.split], plan.index, _STREAM_SCENE_AUDIO)
    background = _background(plan, n, sr, rng, scene_rng)
    band_map = _BandPowerMap(background, sr)
    mix = background.copy()
    for e in plan.events:
        s0 = int(round(e.t_min * sr))
        s1 = min(int(round(e.t_max * sr)), n)
        if s1 - s0 < 16:
            continue
        wave = _synth_event(e, s1 - s0, sr, rng)
        lo, hi = e.band
        p_noise = band_map.band_power(s0, s1, lo, hi)
        p_wave = float(np.mean(wave ** 2)) + 1e-30
        wave = (wave * np.sqrt(p_noise * 10 ** (e.snr_db / 10) / p_wave)).astype(np.float32)
        mix[s0:s1] += wave
        if e.is_call and diff.p_echo > 0 and scene_rng.random() < diff.p_echo:
            _add_echo(mix, wave, s0, sr, scene_rng)
    peak = float(np.max(np.abs(mix)))
    if peak > _PEAK:
        mix *= np.float32(_PEAK / peak)
    return np.clip(np.round(mix * np.float32(32767.0)), -32768, 32767).astype(np.int16)


def _render_to_file(plan: RecordingPlan, cfg: SyntheticConfig, out_dir: str) -> str:
    """Worker task: render one recording and write it as 16-bit FLAC; returns its path."""
    path = Path(out_dir) / plan.split / f"{plan.recording_id}.flac"
    sf.write(str(path), _render(plan, cfg), cfg.sample_rate, format="FLAC", subtype="PCM_16")
    return str(path)


def _render_all(plans: list[RecordingPlan], cfg: SyntheticConfig, out: Path, workers: int, progress: bool,
                mp_context: str | None = None) -> None:
    """Render every recording, in this process (workers <= 1) or a process pool.

    Output does not depend on the pool: each task draws from its own RNG and writes its own file.
    `mp_context` None uses the platform default ('fork' on Linux: no re-import, works from stdin);
    pass 'spawn' from a process whose threads make forking unsafe.
    """
    from tqdm.auto import tqdm

    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(plans), desc="synthetic soundscapes", unit="rec", disable=not progress)
    try:
        if workers <= 1:
            for p in plans:
                _render_to_file(p, cfg, str(out))
                bar.update(1)
            return
        ctx = multiprocessing.get_context(mp_context) if mp_context else None
        with ProcessPoolExecutor(max_workers=min(workers, len(plans)), mp_context=ctx) as pool:
            futures = [pool.submit(_render_to_file, p, cfg, str(out)) for p in plans]
            try:
                for fut in as_completed(futures):
                    fut.result()
                    bar.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------
# Public API: generate / ensure / load
# ----------------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove_stale_temps(root: Path) -> None:
    """Delete temp folders of generations that were killed (their process no longer exists)."""
    if not root.parent.is_dir():
        return
    prefix = root.name + _TEMP_MARKER
    for path in root.parent.iterdir():
        if not (path.name.startswith(prefix) and path.is_dir()):
            continue
        try:
            pid = int(path.name[len(prefix):])
        except ValueError:
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _read_manifest(root: Path) -> dict:
    with open(root / MANIFEST_NAME, encoding="utf-8") as fh:
        return json.load(fh)


def _manifest_mismatch(root: Path, config: SyntheticConfig) -> list[str]:
    """Differences between the manifest at `root` and `config`, as 'field: on disk X, requested Y'."""
    manifest = _read_manifest(root)
    diffs = []
    if manifest.get("format_version") != FORMAT_VERSION:
        diffs.append(f"format_version: on disk {manifest.get('format_version')!r}, requested {FORMAT_VERSION!r}")
    on_disk = manifest.get("config", {})
    for key, want in _config_dict(config).items():
        have = on_disk.get(key, _LEGACY_CONFIG.get(key))
        if have != want:
            diffs.append(f"{key}: on disk {have!r}, requested {want!r}")
    return diffs


def generate(root, config: SyntheticConfig = SyntheticConfig(), *, workers: int = 1,
             progress: bool = True, mp_context: str | None = None) -> Path:
    """Write a synthetic data root at `root` and return it.

    Everything is written to a sibling temp folder that is renamed to `root` at the end (manifest last),
    so `root` either does not exist or is complete. Raises FileExistsError if `root` already holds
    anything (use ``ensure_synthetic`` to reuse a root). `workers` > 1 renders in a process pool
    (`mp_context`: None for the platform default, or 'fork' / 'spawn' / 'forkserver'); the output is
    byte-identical for any number of workers.
    """
    root = Path(root).expanduser().absolute()
    cfg = _resolve(config)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not empty; use ensure_synthetic() to reuse a "
                              f"generated root, or delete it to regenerate")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = root.parent / f"{root.name}{_TEMP_MARKER}{os.getpid()}"
    try:
        tmp.mkdir()
        plan = plan_dataset(cfg)
        _write_tables(plan, tmp)
        _render_all(plan.train + plan.test, cfg, tmp, workers, progress, mp_context)
        manifest = {"format_version": FORMAT_VERSION, "config": _config_dict(cfg), "stats": plan.stats}
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
            fh.write("\n")
        try:
            os.rename(tmp, root)     # atomic; replaces an empty directory at root
        except OSError:
            # A concurrent generator may have finished first with the same config: use its result.
            if (root / MANIFEST_NAME).is_file() and not _manifest_mismatch(root, cfg):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_synthetic(root, config: SyntheticConfig, *, workers: int = 1, progress: bool = True,
                     mp_context: str | None = None) -> Path:
    """Return `root`, generating it first if it has no manifest.json.

    A root generated with another config raises ValueError naming the path and the differing fields:
    silently training on one data set and scoring on another is the failure this guards against.
    """
    root = Path(root).expanduser().absolute()
    if (root / MANIFEST_NAME).is_file():
        diffs = _manifest_mismatch(root, config)
        if diffs:
            raise ValueError(f"synthetic data root {root} was generated with a different config ("
                             + "; ".join(diffs) + "); use another root or delete this one")
        return root
    return generate(root, config, workers=workers, progress=progress, mp_context=mp_context)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {path.parent.parent} a synthetic data root?")
    return pd.read_csv(path, dtype={"recording_id": str}, keep_default_na=False)


def load_truth(root, split: str) -> pd.DataFrame:
    """Clip presence of `split` ('train' | 'test'): recording_id (str) + s0..s{n-1} (0/1), in recording order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _read_csv(Path(root) / "truth" / f"{split}_labels.csv")


def load_calls(root) -> pd.DataFrame:
    """Every synthesized call (both splits): see ``CALL_COLUMNS``; label 'tp' marks train_tp.csv rows."""
    return _read_csv(Path(root) / "truth" / "calls.csv")


def load_confusers(root) -> pd.DataFrame:
    """Every confuser event; species_id is the species whose band it sits in; label 'fp' marks FP rows."""
    return _read_csv(Path(root) / "truth" / "confusers.csv")


def load_distractors(root) -> pd.DataFrame:
    """Every distractor (other sounds, no species; realistic level): see ``DISTRACTOR_COLUMNS``."""
    return _read_csv(Path(root) / "truth" / "distractors.csv")


def load_call_shapes(root) -> pd.DataFrame:
    """The song each call was rendered from, row for row with ``load_calls``: see ``SHAPE_COLUMNS``."""
    return _read_csv(Path(root) / "truth" / "call_shapes.csv")


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rfcx_lightning.data.synthetic ROOT [options]``: generate (or reuse) a data root."""
    defaults = SyntheticConfig()
    ap = argparse.ArgumentParser(prog="python -m rfcx_lightning.data.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="data root to create (reused if it holds the same config)")
    ap.add_argument("--n-train", type=int, default=defaults.n_train)
    ap.add_argument("--n-test", type=int, default=defaults.n_test)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default=defaults.difficulty)
    ap.add_argument("--duration-s", type=float, default=defaults.duration_s)
    ap.add_argument("--sample-rate", type=int, default=defaults.sample_rate)
    ap.add_argument("--tp-per-species", type=int, default=None, help="default: by difficulty (30/20/10/10)")
    ap.add_argument("--variation", type=float, default=None,
                    help="between-individual call variation, 0..2 (1: shapes +/-20%%, pitch +/-9%%); "
                         "default: by difficulty (0; realistic 1)")
    ap.add_argument("--fp-per-tp", type=float, default=defaults.fp_per_tp)
    ap.add_argument("--n-species", type=int, default=defaults.n_species)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    config = SyntheticConfig(n_train=args.n_train, n_test=args.n_test, seed=args.seed, difficulty=args.difficulty,
                             duration_s=args.duration_s, sample_rate=args.sample_rate,
                             tp_per_species=args.tp_per_species, fp_per_tp=args.fp_per_tp, n_species=args.n_species,
                             variation=args.variation)
    start = time.perf_counter()
    try:
        root = ensure_synthetic(args.root, config, workers=args.workers, progress=not args.no_progress)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = _read_manifest(root)["stats"]
    print(f"{root}: {config.n_train} train + {config.n_test} test recordings, {stats['n_tp_rows']} TP rows "
          f"({stats['tp_share_of_train_calls']:.1%} of {stats['n_calls']['train']} train calls), "
          f"{stats['n_fp_rows']} FP rows, {stats['share_calls_below_0db']:.0%} of calls below 0 dB "
          f"[{time.perf_counter() - start:.1f} s]")
    per_clip, q = stats["per_test_clip"], stats["tp_snr_db_quartiles"]
    print(f"per test clip: {per_clip['calls']:.1f} calls, {per_clip['confusers']:.1f} confusers, "
          f"{per_clip['distractors']:.1f} distractors; TP calls: median SNR {q[1]:+.1f} dB "
          f"(quartiles {q[0]:+.1f}, {q[2]:+.1f}), {stats['share_tp_below_0db']:.0%} below 0 dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
