"""Public API: generate a data root (atomically, resumably), reuse one with the same config, load its truth."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ...workspace import atomic_dir
from .config import (
    DIFFICULTIES, FORMAT_VERSION, MANIFEST_NAME, SPLITS, SyntheticConfig, _LEGACY_CONFIG,
)
from .species import _singers
from .plan import (
    SyntheticPlan, _config_dict, _plan_recording, _recording_ids, _resolve, _select_labels, _top_up,
)
from .tables import _stats, _write_tables
from .render import _render_all


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

    Everything is written to a temporary sibling folder (``workspace.atomic_dir``) renamed to `root` at the
    end (manifest last), so `root` either does not exist or is complete. Raises FileExistsError if `root`
    already holds anything (use ``ensure_synthetic`` to reuse a root). `workers` > 1 renders in a process pool
    (`mp_context`: None for the platform default, or 'fork' / 'spawn' / 'forkserver'); the output is
    byte-identical for any number of workers.
    """
    root = Path(root).expanduser().absolute()
    cfg = _resolve(config)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not empty; use ensure_synthetic() to reuse a "
                              f"generated root, or delete it to regenerate")
    try:
        with atomic_dir(root) as tmp:
            plan = plan_dataset(cfg)
            _write_tables(plan, tmp)
            _render_all(plan.train + plan.test, cfg, tmp, workers, progress, mp_context)
            manifest = {"format_version": FORMAT_VERSION, "config": _config_dict(cfg), "stats": plan.stats}
            with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1)
                fh.write("\n")
    except OSError:
        # A concurrent generator may have finished first with the same config: use its result.
        if (root / MANIFEST_NAME).is_file() and not _manifest_mismatch(root, cfg):
            return root
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
