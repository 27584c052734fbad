"""Generate (or reuse) a synthetic data root from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import DIFFICULTIES, SyntheticConfig
from .api import _read_manifest, ensure_synthetic


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
