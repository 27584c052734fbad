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

from .config import DIFFICULTIES, DifficultySpec, FORMAT_VERSION, SyntheticConfig
from .species import SPECIES, SongSpec, SpeciesSpec
from .plan import SyntheticPlan
from .api import (
    ensure_synthetic,
    generate,
    load_call_shapes,
    load_calls,
    load_confusers,
    load_distractors,
    load_truth,
    plan_dataset,
)
from .cli import main

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
