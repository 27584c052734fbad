"""The species: bands and call shapes (songs), the confuser kinds of each call family, and every
individual's own version of its species' call (``data.variation``)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import SyntheticConfig, _SPLIT_CODE, _STREAM_VOICES, _rng


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
