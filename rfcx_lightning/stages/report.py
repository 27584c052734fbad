"""Stage ``report``: how much of the label-efficiency gap each run of a workspace closes.

``python -m rfcx_lightning.run stage=report workspace=W [the data overrides of W's runs]`` reads what the
finished runs of ``W`` wrote, trains nothing, and writes ``W/report.md`` (a table and notes), ``W/report.csv``
(the same table, full precision) and ``W/report.png`` (the figure), each atomically. One row per candidate,
in pipeline order:

1. the prior alone (the same scores, ``score.prior``, for every clip: the floor);
2. the standalone teachers ``template`` and ``bootstrap``;
3. every round (``round<k>_<kind>``, of the pipeline or run alone) in round order, each followed by its
   ensemble candidate ``ensemble<k>`` (``state.json["pipeline"]["rounds"][name]["ensemble"]``) when its files
   exist;
4. the oracle (``stage=oracle``: the bootstrap trained on every true call, the ceiling);
5. every other finished run (``postprocess``, custom names) in the order ``state.json`` lists them.

Columns: the test LWLRAP of the run's ``submission.csv`` as written, of its ``submission_raw.csv``, the OOF
LWLRAP on the submission's scale and before it, its wall time, and its gap to the oracle (oracle minus run).
The OOF pair mirrors the test pair so every row compares like with like: a K-fold stage writes ``oof.csv``
before odds scaling, so its ``oof_lwlrap`` is that table odds-scaled as its ``submission.csv`` was (when the
run's ``score.odds_to_prior`` is on; the same figure as its ``oof_lwlrap`` in ``state.json``) and its
``oof_raw_lwlrap`` the table as written; an ensemble or ``postprocess`` writes ``oof.csv`` already calibrated,
so it has ``oof_lwlrap`` only. The scores come from
the files, not from ``state.json``, so rows that have no stage behind them (the ensembles) are scored the
same way; every file must hold exactly the data root's test (or train) recordings, so all rows are on the
same clips. The clip labels are the ones the stages score against (:func:`~.context.clip_label_sources`:
the synthetic hidden truth, or ``data.labels`` for test only), and the scorer is theirs
(:func:`~.runner.clip_label_scores`). Without labels the table lists the runs and their wall times unscored
and says so.

The report never writes ``state.json``: a report is a view of the workspace, and an entry of its own would
count as the newest stage run and stop a died standalone round from resuming under its name.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ..orchestration.leaderboard import read_score_table
from ..postprocessing import odds_scale_to_prior
from ..workspace import STATE_FILE, RunState, atomic_path, parse_round_name, run_kind, write_csv, write_text
from .context import odds_to_prior
from .runner import clip_label_scores

log = logging.getLogger(__name__)

#: the files of a run the report scores: (prediction set, file, split of its recordings)
RUN_FILES = (("test", "submission.csv", "test"), ("test_raw", "submission_raw.csv", "test"),
             ("oof", "oof.csv", "train"))
TEACHER_KINDS = ("template", "bootstrap")
COLUMNS = ["run", "kind", "test_lwlrap", "test_raw_lwlrap", "oof_lwlrap", "oof_raw_lwlrap", "wall_seconds",
           "test_gap_to_oracle", "oof_gap_to_oracle", "note"]
SCORE_COLUMNS = ["test_lwlrap", "test_raw_lwlrap", "oof_lwlrap", "oof_raw_lwlrap"]


@dataclass
class ReportRun:
    """One row: a run (or the prior, or an ensemble) and where its score files are."""

    name: str
    kind: str
    files: dict[str, Path] = field(default_factory=dict)   # file name -> path (only the files that exist)
    wall_seconds: float | None = None
    note: str = ""
    #: ``oof.csv`` holds scores before odds scaling (a K-fold stage run) ...
    oof_is_raw: bool = False
    #: ... which its submission odds-scaled toward the prior (``score.odds_to_prior`` of its config)
    oof_odds_scaled: bool = False


def _files(state: RunState, entry: dict[str, Any] | None, folder: Path) -> dict[str, Path]:
    """The run's score files: where ``state.json`` says they are, else in ``folder``; only those that exist."""
    outputs = (entry or {}).get("outputs") or {}
    found = {}
    for _, file_name, _ in RUN_FILES:
        path = state.resolve(outputs[file_name]) if file_name in outputs else folder / file_name
        if path.is_file():
            found[file_name] = path
    return found


def collect_runs(state: RunState) -> tuple[list[ReportRun], list[str]]:
    """The report's rows in pipeline order (module docstring) and notes on what was left out and why."""
    stages: dict[str, dict[str, Any]] = state.data.get("stages", {})
    rounds: dict[str, dict[str, Any]] = (state.data.get("pipeline") or {}).get("rounds", {})
    notes: list[str] = []
    finished: dict[str, ReportRun] = {}
    for name, entry in stages.items():
        outputs = entry.get("outputs") or {}
        if "submission.csv" not in outputs:
            if outputs:
                notes.append(f"`{name}` wrote no submission.csv (not a detector run); left out")
            elif entry.get("folds"):
                notes.append(f"`{name}` has not finished (no submission.csv recorded in {state.path.name}); "
                             "left out")
            continue
        wall = (rounds.get(name) or {}).get("wall_seconds", entry.get("wall_seconds"))
        kind = run_kind(name, entry)
        raw = kind != "postprocess"      # every K-fold stage writes oof.csv before odds scaling
        finished[name] = ReportRun(name, kind, _files(state, entry, state.workspace / name),
                                   None if wall is None else float(wall), oof_is_raw=raw,
                                   oof_odds_scaled=raw and odds_to_prior(OmegaConf.create(entry["config"])))

    def take(names: Sequence[str]) -> list[ReportRun]:
        return [finished.pop(n) for n in names if n in finished]

    rows = [ReportRun("prior", "prior", note="score.prior for every clip")]
    rows += take([n for kind in TEACHER_KINDS for n, r in finished.items()
                  if r.kind == kind and parse_round_name(n) is None])
    round_names = sorted((n for n in finished if parse_round_name(n) is not None),
                         key=lambda n: parse_round_name(n)[0])
    for run in take(round_names):
        rows.append(run)
        ensemble = (rounds.get(run.name) or {}).get("ensemble") or {}
        if ensemble.get("name"):
            folder = state.workspace / str(ensemble["name"])
            files = _files(state, None, folder)
            members = "+".join(ensemble.get("members") or [])
            if "submission.csv" in files:
                rows.append(ReportRun(str(ensemble["name"]), "ensemble", files,
                                      note=f"mean of {members} (calibrated scores, its OOF too)"))
            else:
                notes.append(f"`{ensemble['name']}` (ensemble of {members}) is recorded but "
                             f"{folder / 'submission.csv'} does not exist; left out")
    rows += take([n for n, r in finished.items() if r.kind == "oracle"])
    rows += take(list(finished))
    return rows, notes


def read_run_scores(path: Path, ids: Sequence[str], species: Sequence[int]) -> np.ndarray:
    """(len(ids), n_species) scores of a submission / OOF table, rows in ``ids`` order.

    The table must hold exactly ``ids`` (the data root's test or train recordings): a run scored on other
    clips is not comparable, so that is an error naming the file, as is a missing ``s<k>`` column.
    """
    frame = read_score_table(path, "run scores").set_index("recording_id")
    columns = [f"s{s}" for s in species]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column for species {missing[:5]}; it was written for other data")
    absent = [r for r in ids if r not in frame.index]
    extra = sorted(set(frame.index) - set(ids))
    if absent or extra:
        raise ValueError(f"{path}: holds other recordings than the data root ({len(absent)} missing, e.g. "
                         f"{absent[:3]}; {len(extra)} unknown, e.g. {extra[:3]}); were W's runs made with other "
                         "data overrides than this report's?")
    return frame.loc[list(ids), columns].to_numpy(dtype=np.float64)


def score_runs(runs: Sequence[ReportRun], ids: dict[str, Sequence[str]], truths: dict[str, pd.DataFrame | None],
               species: Sequence[int], prior: np.ndarray | None) -> pd.DataFrame:
    """The report table (``COLUMNS``), one row per run, in the order given.

    ``ids``: ``{"test": test ids, "train": train ids}``; ``truths``: ``{"test": ..., "oof": ...}`` clip labels in
    those orders (``None``: unscored). Every file present is read and checked even where it cannot be scored.
    """
    species = list(species)
    records = []
    for run in runs:
        if run.kind == "prior":
            scores = {} if prior is None else clip_label_scores(
                {"test": np.broadcast_to(prior, (len(ids["test"]), len(species))),
                 "oof": np.broadcast_to(prior, (len(ids["train"]), len(species)))}, truths, species, prior)
        else:
            predictions = {key: read_run_scores(run.files[file_name], ids[split], species)
                           for key, file_name, split in RUN_FILES if file_name in run.files}
            if "oof" in predictions and run.oof_is_raw:
                predictions["oof_raw"] = predictions["oof"]
                if run.oof_odds_scaled and prior is not None:
                    predictions["oof"] = odds_scale_to_prior(predictions["oof_raw"], prior)
            scores = clip_label_scores(predictions, truths, species, prior)
        note = run.note
        absent = [f for _, f, _ in RUN_FILES if f not in run.files]
        if run.kind != "prior" and absent:
            note = "; ".join(filter(None, [note, f"no {', '.join(absent)}"]))
        records.append({"run": run.name, "kind": run.kind, **{c: scores.get(c) for c in SCORE_COLUMNS},
                        "wall_seconds": run.wall_seconds, "note": note})
    table = pd.DataFrame(records, columns=[c for c in COLUMNS if not c.endswith("_gap_to_oracle")])
    table[SCORE_COLUMNS + ["wall_seconds"]] = table[SCORE_COLUMNS + ["wall_seconds"]].astype(float)
    oracle = table[table["kind"] == "oracle"]
    for split in ("test", "oof"):
        ceiling = float(oracle[f"{split}_lwlrap"].iloc[0]) if len(oracle) else math.nan
        table[f"{split}_gap_to_oracle"] = ceiling - table[f"{split}_lwlrap"]
    return table[COLUMNS]


# -- writing -------------------------------------------------------------------------------------------------
def _cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _wall(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown(table: pd.DataFrame, header: Sequence[str], notes: Sequence[str]) -> str:
    """``report.md``: the header lines, the table (3 decimals; gaps signed), the notes and the figure."""
    lines = ["# Label-efficiency report", "", *header, "",
             "| run | kind | test LWLRAP | test raw | OOF LWLRAP | OOF raw | wall time | gap to oracle (test) | "
             "gap to oracle (OOF) | note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table.itertuples(index=False):
        gaps = [("" if not math.isfinite(g) else f"{g:+.3f}") for g in (row.test_gap_to_oracle, row.oof_gap_to_oracle)]
        lines.append(f"| {row.run} | {row.kind} | {_cell(row.test_lwlrap)} | {_cell(row.test_raw_lwlrap)} | "
                     f"{_cell(row.oof_lwlrap)} | {_cell(row.oof_raw_lwlrap)} | {_wall(row.wall_seconds)} | {gaps[0]} | "
                     f"{gaps[1]} | {row.note} |")
    if notes:
        lines += ["", "Notes:", "", *[f"* {n}" for n in notes]]
    lines += ["", "![test and OOF LWLRAP per run](report.png)", ""]
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """``report.png``: test (as written) and OOF LWLRAP per run as points joined in table (pipeline) order;
    the prior and the oracle as horizontal lines (dashed, dotted) in the same colours. Points, not bars: the
    y axis is zoomed onto the scores, and bars cut off at an axis that does not start at 0 would mislead.
    Without scores, a figure saying so, so that ``report.png`` never shows an older report's numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    references = {k: table[table["kind"] == k] for k in ("prior", "oracle")}
    runs = table[~table["kind"].isin(["prior", "oracle"])]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.8 * len(runs) + 4.5), 4.5))
    colors = {"test": "tab:blue", "oof": "tab:orange"}
    values = table[["test_lwlrap", "oof_lwlrap"]].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        ax.text(0.5, 0.5, "no clip labels known: nothing to score\n(see report.md)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        x = np.arange(len(runs))
        for split, marker, label in (("test", "o", "test (submission.csv)"), ("oof", "s", "OOF (as the submission)")):
            ys = runs[f"{split}_lwlrap"].to_numpy(dtype=float)
            ax.plot(x, ys, marker=marker, color=colors[split], linewidth=1, label=label)
            for xi, y in zip(x, ys):
                if math.isfinite(y):
                    ax.annotate(f"{y:.3f}", (xi, y), textcoords="offset points", xytext=(0, 6), ha="center",
                                fontsize=7, color=colors[split])
        for kind, style in (("prior", "--"), ("oracle", ":")):
            for split in ("test", "oof"):
                rows = references[kind]
                if len(rows) and math.isfinite(float(rows[f"{split}_lwlrap"].iloc[0])):
                    value = float(rows[f"{split}_lwlrap"].iloc[0])
                    ax.axhline(value, color=colors[split], linestyle=style, linewidth=1.2,
                               label=f"{rows['run'].iloc[0]}, {'test' if split == 'test' else 'OOF'}: {value:.3f}")
        ax.set_xticks(x)
        ax.set_xticklabels(runs["run"].tolist(), rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, max(len(runs) - 0.5, 0.5))
        ax.set_ylabel("LWLRAP")
        finite = values[np.isfinite(values)]
        ax.set_ylim(max(0.0, float(finite.min()) - 0.05), min(1.02, float(finite.max()) + 0.05))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def write_report(workspace: Path, table: pd.DataFrame, header: Sequence[str], notes: Sequence[str]) -> dict[str, Path]:
    """``W/report.md``, ``W/report.csv`` and ``W/report.png``, each written atomically."""
    workspace = Path(workspace)
    return {"report.csv": write_csv(workspace / "report.csv", table),
            "report.png": plot(table, workspace / "report.png", title=f"label efficiency: {workspace.name}"),
            "report.md": write_text(workspace / "report.md", markdown(table, header, notes))}


def require_workspace(workspace: Path) -> Path:
    """``workspace`` if it has a ``state.json``; else a ``FileNotFoundError`` naming the file."""
    workspace = Path(workspace)
    if not (workspace / STATE_FILE).is_file():
        raise FileNotFoundError(f"stage=report: {workspace / STATE_FILE} does not exist, so {workspace} is not a "
                                "workspace with finished runs; run stage=bootstrap (or stage=pipeline) with "
                                f"workspace={workspace} first, or point workspace= at one")
    return workspace


def build_report(workspace: Path, ids: dict[str, Sequence[str]], truths: dict[str, pd.DataFrame | None],
                 species: Sequence[int], prior: np.ndarray | None, label_sources: dict[str, Path]) -> pd.DataFrame:
    """Collect, score and write the report of ``workspace``; returns the table. See the module docstring."""
    workspace = require_workspace(workspace)
    state = RunState(workspace, writable=False)
    runs, notes = collect_runs(state)
    if len(runs) == 1:
        raise FileNotFoundError(f"stage=report: {state.path} lists no finished run with a submission.csv; run "
                                f"stage=bootstrap (or stage=pipeline) with workspace={workspace} first")
    table = score_runs(runs, ids, truths, species, prior)
    header = [f"Workspace `{workspace}`: {len(table) - 1} runs; {len(ids['test'])} test clips, "
              f"{len(ids['train'])} OOF recordings (the same for every row)."]
    if truths.get("test") is None and truths.get("oof") is None:
        header.append("**No clip labels are known for this data** (no synthetic hidden truth, no `data.labels`), "
                      "so the table has no scores: only the runs and their wall times.")
    else:
        header.append("Scored (LWLRAP) against " + "; ".join(
            f"{'test' if split == 'test' else 'OOF'}: `{path}`" for split, path in label_sources.items()) + ".")
        if truths.get("oof") is None:
            header.append("No clip labels for the train recordings: the OOF column is empty.")
    header.append("test LWLRAP: `submission.csv` as written (odds-scaled toward `score.prior` unless the stage "
                  "turns it off); test raw: `submission_raw.csv`; OOF LWLRAP: `oof.csv` on the submission's scale "
                  "(a K-fold run's table odds-scaled as its submission was; an ensemble's as written), the "
                  "`oof_lwlrap` of state.json; OOF raw: a K-fold run's `oof.csv` as written, before odds scaling; "
                  "gap to oracle: the oracle's LWLRAP minus the run's (positive: below the ceiling).")
    oracle = [n for n, e in state.data.get("stages", {}).items() if run_kind(n, e) == "oracle"]
    if not (table["kind"] == "oracle").any():
        notes.append("no finished oracle run, so no gaps: run `stage=oracle` with this workspace (synthetic data only)")
    for name in oracle:
        labels = state.data["stages"][name].get("labels") or {}
        if labels:
            notes.append(f"`{name}` trained on {labels.get('tp_boxes')} true calls as TP boxes (the annotated data "
                         f"has {labels.get('annotated_tp_boxes')} TP rows) and the {labels.get('fp_boxes')} FP rows")
    write_report(workspace, table, header, notes)
    return table


class ReportStage:
    """``stage=report``: the data root's ids, clip labels and prior for ``build_report``; writes nothing else.

    Not a ``StageRun``: it needs no audio cache, boxes or folds, and must fail before touching anything when
    the workspace does not exist (``prepare_context`` would create it and generate data first).
    """

    kind = "report"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.workspace = Path(str(cfg.workspace)).expanduser().resolve()

    def run(self) -> dict[str, Any]:
        from ..data.annotations import DataRoot
        from .context import class_prior, clip_label_sources, load_clip_truth, resolve_data_root

        if rank_zero_only.rank != 0:
            return {}
        require_workspace(self.workspace)     # before resolve_data_root, which may generate data
        root = resolve_data_root(self.cfg, is_global_zero=True)
        data_root = DataRoot(root)
        data_root.check(require_test=True)
        train_ids, test_ids = data_root.train_ids(), data_root.test_ids()
        species = list(data_root.species_ids())
        test_truth, train_truth = load_clip_truth(self.cfg, root, train_ids, test_ids, species)
        table = build_report(self.workspace, {"test": test_ids, "train": train_ids},
                             {"test": test_truth, "oof": train_truth}, species,
                             class_prior(self.cfg, len(species)), clip_label_sources(self.cfg, root))
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table.drop(columns=["note"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
        print(f"report: wrote {self.workspace / 'report.md'} and {self.workspace / 'report.png'}", flush=True)
        return {"table": table}
