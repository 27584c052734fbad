"""The plan: who sings when and how loud in each recording, and which boxes are labelled (cheap, sequential)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..priors import RFCX_TEST_PRIOR
from .config import (
    ANNOTATION_COLUMNS, DIFFICULTIES, DifficultySpec, SyntheticConfig, _CALLS_PER_TP, _SNR_CLIP, _SPLIT_CODE,
    _STREAM_IDS, _STREAM_PLAN, _STREAM_SCENE, _STREAM_TOPUP, _rng,
)
from .species import SPECIES, SongSpec, SpeciesSpec, _CONFUSER_KINDS, _Singers


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
