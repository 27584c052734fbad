"""The render: the audio of one recording from its plan (expensive, one task per recording)."""

from __future__ import annotations

import functools
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import scipy.fft as sfft
import soundfile as sf

from .config import (
    DIFFICULTIES, SPLITS, SyntheticConfig, _PEAK, _SPLIT_CODE, _STREAM_AUDIO, _STREAM_SCENE_AUDIO, _rng,
)
from .species import SPECIES, SongSpec
from .plan import Event, RecordingPlan


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
