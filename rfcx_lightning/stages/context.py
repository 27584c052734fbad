"""Everything a stage needs before training: the validated data root, classes, boxes, audio cache, folds.

Prepared once per process. Only global rank 0 generates synthetic data and builds the audio cache; under
Lightning's DDP launcher the other ranks start when rank 0 reaches its first ``fit``, by which time both
exist, so they only open them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, open_dict
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ..data.annotations import ClassScheme, DataRoot, is_auto_length, load_boxes
from ..data.audio import AudioCache, AudioSettings
from ..data.datamodule import RecordingSet
from ..data.folds import load_or_make_folds
from ..data.labels import BoxIndex
from ..data.priors import RFCX_TEST_PRIOR
from ..settings import from_block

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    cfg: DictConfig
    workspace: Path
    data_root: DataRoot
    scheme: ClassScheme
    boxes: pd.DataFrame
    train: RecordingSet
    test_ids: list[str]
    cache: AudioCache
    fold_of_recording: np.ndarray      # fold of each train recording, in train.recording_ids order
    species: list[int]                 # submission columns s<species>
    prior: np.ndarray | None           # per-species prior for the prior-only baseline
    test_truth: pd.DataFrame | None    # clip labels of test recordings (hidden truth / holdout CSV)
    train_truth: pd.DataFrame | None
    is_global_zero: bool

    @property
    def n_folds(self) -> int:
        return int(self.cfg.folds)


def resolve_data_root(cfg: DictConfig, is_global_zero: bool) -> Path:
    """The data root; for ``data=synthetic`` it is generated (once) if missing; for ``data=raven`` it is
    the Kaggle-layout conversion of the Raven root, made once (``data.converted``)."""
    data = cfg.data
    root = Path(str(data.root)).expanduser().resolve()
    if data.kind == "raven":
        from ..data.raven import MANIFEST_NAME, RavenSource, ensure_raven_root

        converted = Path(str(data.converted)).expanduser().resolve()
        if is_global_zero:
            ensure_raven_root(RavenSource.from_config(data, allow_other_rates=bool(cfg.audio.allow_other_rates)),
                              converted)
        else:
            wait_for(lambda: (converted / MANIFEST_NAME).exists(), f"the converted Raven root at {converted}")
        return converted
    if data.kind != "synthetic":
        return root
    from ..data.synthetic import SyntheticConfig, ensure_synthetic

    if is_auto_length(data.duration_s):
        raise ValueError("data.duration_s=auto is for recordings of different lengths; the synthetic data are "
                         "generated at one length: give it in seconds (data.duration_s=60)")

    config = SyntheticConfig(n_train=int(data.n_train), n_test=int(data.n_test), seed=int(data.seed),
                             difficulty=str(data.difficulty), duration_s=float(data.duration_s),
                             sample_rate=int(data.native_sample_rate),
                             tp_per_species=data.get("tp_per_species"), variation=data.get("variation"))
    if is_global_zero:
        ensure_synthetic(root, config, workers=int(data.workers))
    else:
        wait_for(lambda: (root / "manifest.json").exists(), f"synthetic data at {root}")
    return root


def recording_lengths(cfg: DictConfig, data_root: DataRoot) -> tuple[float, dict[str, float] | None]:
    """``(grid seconds, each train recording's own length or None)`` for ``data.duration_s``.

    A number: every recording has that length (longer files are trimmed, shorter ones are an error), the
    Kaggle RFCx case. ``auto``: recordings of any length. Framewise predictions of a split are then
    stacked on the grid of the longest recording (frames past a recording's end are 0, and its own length
    is kept beside them); training crops and pseudo-label windows stay inside each recording, and boxes
    are checked against their own recording's end.
    """
    if not is_auto_length(cfg.data.duration_s):
        return float(cfg.data.duration_s), None
    train = data_root.recording_seconds("train")
    test = data_root.recording_seconds("test") if data_root.test_dir.is_dir() else {}
    return max([*train.values(), *test.values()]), train


def load_data_boxes(cfg: DictConfig, data_root: DataRoot) -> tuple[pd.DataFrame, ClassScheme, float]:
    """The data root's validated TP/FP boxes, class scheme and grid length in seconds (``data.*`` keys)."""
    grid, lengths = recording_lengths(cfg, data_root)
    boxes, scheme = load_boxes(data_root, scheme_by_songtype=bool(cfg.data.by_songtype),
                               duration_s=lengths if lengths is not None else grid,
                               native_sample_rate=int(cfg.data.native_sample_rate))
    return boxes, scheme, grid


def wait_for(ready, what: str, timeout_s: float = 3600.0, poll_s: float = 2.0) -> None:
    """Block a non-zero rank until rank 0 has prepared ``what``.

    Lightning's own DDP launcher starts the other ranks only when rank 0 reaches ``fit`` (everything is
    ready then); launchers that start all ranks at once (torchrun, SLURM) need this wait.
    """
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to prepare {what}")
        time.sleep(poll_s)


@dataclass
class ScoreSettings:
    """The ``score:`` block: the class prior and whether each stage's ``submission.csv`` is scaled to it.
    Checked when a stage's context is built (a recorded run's config is read key by key: older workspaces
    kept ``odds_to_prior`` under ``postprocess:``)."""

    prior: Any                      # rfcx_test | [per-class values] | null
    odds_to_prior: bool


def odds_to_prior(cfg: DictConfig) -> bool:
    """Whether a run's ``submission.csv`` is odds-scaled toward ``score.prior`` (``score.odds_to_prior``).

    Detection reads this from a run's recorded config; workspaces written before the key moved into
    ``score:`` (2026-12-08) recorded it as ``postprocess.odds_to_prior``.
    """
    if "odds_to_prior" in cfg.score:
        return bool(cfg.score.odds_to_prior)
    return bool(cfg.postprocess.odds_to_prior)


def class_prior(cfg: DictConfig, n_species: int) -> np.ndarray | None:
    """The per-class prior of ``score.prior`` (``rfcx_test``: the RFCx test set's; a list; null: none)."""
    prior = cfg.score.get("prior")
    if prior is None:
        return None
    if prior == "rfcx_test":
        values = np.asarray(RFCX_TEST_PRIOR[:n_species], dtype=np.float64)
        if len(values) < n_species:
            raise ValueError(f"score.prior=rfcx_test has 24 classes, the data has {n_species}")
        return values
    values = np.asarray(list(prior), dtype=np.float64)
    if len(values) != n_species:
        raise ValueError(f"score.prior has {len(values)} values, the data has {n_species} species")
    return values


def load_clip_labels(path: Path, ids: list[str], species: list[int]) -> pd.DataFrame:
    """A clip-label CSV in sample_submission format, checked against the recordings it must cover."""
    frame = pd.read_csv(path, dtype={"recording_id": str}, keep_default_na=False)
    columns = [f"s{s}" for s in species]
    missing = [c for c in ["recording_id"] + columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    frame = frame.set_index("recording_id")
    absent = sorted(set(ids) - set(frame.index))
    if absent:
        raise ValueError(f"{path}: no labels for {len(absent)} recordings, e.g. {absent[:3]} (data.labels must "
                         "cover every test recording; for labels of only some, use lb=holdout lb.labels=PATH)")
    return frame.loc[ids, columns].reset_index()


def clip_label_sources(cfg: DictConfig, root: Path) -> dict[str, Path]:
    """Where the clip labels every stage scores against come from, per split (``test``, ``train``).

    ``data.labels`` (test recordings only) wins; otherwise the synthetic data's hidden truth (both splits);
    otherwise none: real RFCx train data has no clip labels. One rule, so that the stages' own scores and
    ``stage=report`` can never disagree about the truth.
    """
    if cfg.data.get("labels"):
        return {"test": Path(str(cfg.data.labels))}
    if cfg.data.kind == "synthetic":
        return {"test": root / "truth" / "test_labels.csv", "train": root / "truth" / "train_labels.csv"}
    return {}


def load_clip_truth(cfg: DictConfig, root: Path, train_ids: list[str], test_ids: list[str],
                    species: list[int]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``(test_truth, train_truth)`` from :func:`clip_label_sources`, ``None`` for a split without labels."""
    sources = clip_label_sources(cfg, root)
    ids = {"test": test_ids, "train": train_ids}
    test, train = (load_clip_labels(sources[split], ids[split], species) if split in sources else None
                   for split in ("test", "train"))
    return test, train


def with_train_boxes(ctx: StageContext, boxes: pd.DataFrame) -> StageContext:
    """A copy of ``ctx`` whose train recordings carry other boxes (``ctx.boxes`` and ``ctx.train.boxes``).

    Everything else is kept, the folds above all: they were made (or read from ``W/folds.csv``) from the
    annotated boxes, so a stage trained on other labels (the oracle) is scored on the same folds as every
    other run in the workspace. ``boxes`` has the columns of :func:`~rfcx_lightning.data.annotations.load_boxes`.
    """
    ids = list(ctx.train.recording_ids)
    train = dataclasses.replace(ctx.train, boxes=BoxIndex.from_frame(boxes, ids))
    return dataclasses.replace(ctx, boxes=boxes, train=train)


def prepare_context(cfg: DictConfig) -> StageContext:
    is_global_zero = rank_zero_only.rank == 0
    workspace = Path(str(cfg.workspace)).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    root = resolve_data_root(cfg, is_global_zero)
    data_root = DataRoot(root)
    data_root.check(require_test=True)
    variable_length = is_auto_length(data.duration_s)
    boxes, scheme, grid_seconds = load_data_boxes(cfg, data_root)
    if variable_length:  # every later reader of data.duration_s sees the grid: the longest recording
        with open_dict(cfg):
            cfg.data.duration_s = grid_seconds
    train_ids, test_ids = data_root.train_ids(), data_root.test_ids()
    species = list(data_root.species_ids())

    audio = from_block(AudioSettings, cfg.audio, "audio")
    cache = audio.cache()
    if is_global_zero:
        items = [("train", rid, data_root.audio_path("train", rid)) for rid in train_ids]
        items += [("test", rid, data_root.audio_path("test", rid)) for rid in test_ids]
        cache.build(items, workers=audio.workers, expected_sr=int(data.native_sample_rate),
                    expected_duration_s=None if variable_length else float(data.duration_s),
                    downmix=audio.downmix, allow_resample_other_rates=audio.allow_other_rates)
    else:
        wait_for(lambda: all(cache.has("train", r) for r in train_ids) and
                 all(cache.has("test", r) for r in test_ids), f"the audio cache at {cache.root}")

    folds = load_or_make_folds(workspace / "folds.csv", train_ids, boxes, scheme.n_classes,
                               int(cfg.folds), int(cfg.seed))
    fold_of = folds.set_index("recording_id").loc[train_ids, "fold"].to_numpy()
    train = RecordingSet("train", tuple(train_ids), BoxIndex.from_frame(boxes, train_ids))

    test_truth, train_truth = load_clip_truth(cfg, root, train_ids, test_ids, species)
    from_block(ScoreSettings, cfg.score, "score")

    return StageContext(cfg=cfg, workspace=workspace, data_root=data_root, scheme=scheme, boxes=boxes,
                        train=train, test_ids=list(test_ids), cache=cache, fold_of_recording=fold_of,
                        species=species, prior=class_prior(cfg, len(species)), test_truth=test_truth,
                        train_truth=train_truth, is_global_zero=is_global_zero)
