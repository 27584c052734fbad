"""Round naming and the stopping rule: which pseudo-label round comes next, and whether to stop.

The workspace is the state. Every round of the pipeline runs one stage kind under the name
``round<k>_<kind>`` (round 0 is the first stage, e.g. ``round0_bootstrap``), so each round keeps its own
folder ``W/<name>/``, its own ``state.json`` entry and its own pseudo-label pool entry. A round stage run on
its own (``stage=coteach workspace=W``) takes the next free number from ``state.json``, or, if the newest
round of that kind died before finishing, that round again, so rerunning the same command resumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..workspace import parse_round_name, round_name, run_finished

__all__ = ["ROUND_KINDS", "parse_round_name", "round_name", "next_round_name"]

#: stages that learn from the pseudo-label pool of earlier rounds; run alone, they are named as rounds
ROUND_KINDS = frozenset({"coteach", "noisy_student"})


def next_round_name(stages: Mapping[str, Mapping[str, Any]], kind: str) -> str:
    """The name a standalone ``stage=<kind>`` run gets in a workspace whose ``state.json`` has ``stages``.

    If the most recent stage run in the workspace is an unfinished round of the same kind (the command
    died), it is resumed. Otherwise the number after the highest round in the workspace (an abandoned
    unfinished round keeps its number and folder); a finished stage that is not a round (a standalone
    ``bootstrap``) counts as round 0.
    """
    if stages:
        last_name, last_state = list(stages.items())[-1]
        parsed = parse_round_name(last_name)
        if parsed and parsed[1] == kind and not run_finished(last_state):
            return last_name
    highest = -1
    for name, stage_state in stages.items():
        parsed = parse_round_name(name)
        if parsed is not None:
            highest = max(highest, parsed[0])
        elif run_finished(stage_state):
            highest = max(highest, 0)
    return round_name(highest + 1, kind)


def standalone_run_name(stages: Mapping[str, Mapping[str, Any]], kind: str) -> str:
    """The run name of ``stage=<kind>`` on the command line: round kinds get a round name, others their kind."""
    return next_round_name(stages, kind) if kind in ROUND_KINDS else kind


@dataclass(frozen=True)
class Decision:
    """After a round: stop or go on, why, and which round (index into the scores) is the best so far."""

    stop: bool
    reason: str
    best: int
    stale: int          # rounds since the last improvement by more than min_delta


def plateau_decision(scores: Sequence[float | None], patience: int, min_delta: float, max_rounds: int,
                     has_next: bool = True) -> Decision:
    """Early stopping on leaderboard scores, one per finished round, in order (``None``: no score).

    A round improves when its score beats the best earlier score by more than ``min_delta`` (the first
    scored round always does). Stop once ``patience`` scored rounds in a row did not improve, when
    ``max_rounds`` rounds ran, or when there is no next round (``has_next``). Rounds without a score
    (``lb=none``) never count as stale, so they run a fixed number of rounds. The best round is the
    highest score (the earliest on ties), or the last round when nothing was scored.
    """
    if not scores:
        raise ValueError("plateau_decision needs the score of at least one finished round")
    reference, stale = None, 0
    for score in scores:
        if score is None:
            continue
        if reference is None or score > reference + min_delta:
            reference, stale = score, 0
        else:
            stale += 1
    scored = [(s, -i) for i, s in enumerate(scores) if s is not None]
    best = -max(scored)[1] if scored else len(scores) - 1
    if patience > 0 and stale >= patience:
        return Decision(True, f"no improvement by more than {min_delta} for {stale} rounds", best, stale)
    if len(scores) >= max_rounds:
        return Decision(True, f"max_rounds={max_rounds} reached", best, stale)
    if not has_next:
        return Decision(True, "the sequence is finished", best, stale)
    return Decision(False, "continue", best, stale)
