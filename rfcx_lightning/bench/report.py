"""The benchmark report: one table (stdout and markdown) built from the results JSON."""

from __future__ import annotations

import importlib

from ..workspace import write_text


def table_rows(results: dict) -> list[tuple[str, str, str]]:
    """(measure, value, note) of every finished benchmark, in run order (each module formats its own)."""
    out = []
    for name, result in results.items():
        module = importlib.import_module(f"{__package__}.{name}")
        out.extend(module.rows(result))
    return out


def text_table(rows: list[tuple[str, str, str]]) -> str:
    width = max([len(r[0]) for r in rows] + [9])
    lines = [f"{'benchmark':<{width}}  {'value':>20}  note"]
    lines += [f"{m:<{width}}  {v:>20}  {n}" for m, v, n in rows]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = ["# rfcx_lightning benchmark", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {machine['cpus']} CPUs, device {machine['device']}, torch {machine['torch']}, "
             f"python {machine['python']}, {machine['threads']} torch threads.", "",
             "| benchmark | value | note |", "| --- | --- | --- |"]
    lines += [f"| {m} | {v} | {n} |" for m, v, n in table_rows(report["results"])]
    lines += ["", "| benchmark | load average (1 min) before / after |", "| --- | --- |"]
    lines += [f"| {name} | {load[0]:.2f} / {load[1]:.2f} |" for name, load in report["load_avg"].items()]
    return "\n".join(lines) + "\n"


def write_markdown(path, report: dict) -> None:
    write_text(path, markdown(report))
