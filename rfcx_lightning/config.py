"""Composing a run's configuration from the one tree, the top-level ``stages/`` folder (installed as
``rfcx_lightning.conf``): ``config.yaml`` lists the defaults once, ``stage=<name>`` picks a recipe of the
group ``stage/`` and ``preset=``, ``data=``, ``logger=``, ``lb=`` the other groups.

Its own module so that the CLI (``run.py``) and the pipeline, which composes each round's recipe, both
use it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

__all__ = ["available_stages", "config_dir", "load_config"]


def config_dir() -> Path:
    """The configuration tree: the repo's ``stages/`` (source checkout, editable install) or the installed
    copy, ``rfcx_lightning.conf``."""
    repo = Path(__file__).resolve().parents[1] / "stages"
    if (repo / "config.yaml").exists():
        return repo
    import rfcx_lightning.conf as conf

    return Path(conf.__file__).parent


def available_stages() -> list[str]:
    """The recipes of the group ``stage/``: what ``stage=<name>`` accepts."""
    return sorted(p.stem for p in (config_dir() / "stage").glob("*.yaml"))


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the config of ``stage=<name>`` (default bootstrap) with Hydra overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for item in overrides:
        stage = item.split("=", 1)[1] if item.startswith("stage=") else None
        if stage is not None and stage not in available_stages():
            raise SystemExit(f"stage={stage!r} is not a stage recipe; choose one of {available_stages()}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
