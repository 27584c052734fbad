"""What to generate: the config, the difficulty levels and the table formats."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


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
# Config fields added after format 1 was first written, with the value that older roots were made with:
# a root from before ``variation`` existed holds exactly the data of variation 0, so it is reused.
_LEGACY_CONFIG = {"variation": 0.0}
_PEAK = 0.98           # recordings whose mix peaks above this are scaled down (SNRs are unchanged)
_SNR_CLIP = (-12.0, 28.0)
# Every species has at least this many calls per TP row in train (rare species are topped up).
_CALLS_PER_TP = 3



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


def _rng(seed: int, split_code: int, index: int, stream: int) -> np.random.Generator:
    """Independent RNG per (seed, split, recording index, purpose): order- and worker-independent."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), split_code, int(index), stream]))
