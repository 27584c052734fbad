"""Command line: ``python -m rfcx_lightning.run stage=bootstrap [overrides...]``.

Configuration is composed with Hydra's compose API from one tree, the top-level ``stages/`` folder
(:mod:`rfcx_lightning.config`). We compose instead of using
``@hydra.main`` on purpose: Hydra's own run folder and working-directory changes would put outputs
outside the workspace and, under DDP, create one folder per process. Every output goes to ``workspace``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from .config import available_stages, config_dir, load_config

__all__ = ["available_stages", "config_dir", "load_config", "main", "run"]

log = logging.getLogger("rfcx_lightning")


def run(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict:
    """Prepare the data and run the configured stage; returns the stage's scores.

    ``stage=pipeline`` composes each round's own recipe with ``overrides`` (the command line's). A round
    stage run alone (coteach, noisy_student) is named as the workspace's next round, ``round<k>_<kind>``.
    """
    from .orchestration.rounds import standalone_run_name
    from .stages import stage_class
    from .stages.context import prepare_context
    from .workspace import RunState

    if cfg.stage.name == "pipeline":
        from .orchestration.pipeline import PipelineStage

        return PipelineStage(cfg, overrides).run()
    if cfg.stage.name == "detect":  # applies a finished workspace's models; needs no data context
        from .detection import DetectStage

        return DetectStage(cfg).run()
    if cfg.stage.name == "report":  # reads a finished workspace; must not create one or build a cache
        from .stages.report import ReportStage

        return ReportStage(cfg).run()
    started = time.time()
    ctx = prepare_context(cfg)
    name = standalone_run_name(RunState(ctx.workspace, writable=False).data["stages"], cfg.stage.name)
    stage = stage_class(cfg.stage.name)(ctx, name=name)
    scores = stage.run()
    if stage.ctx.is_global_zero:
        elapsed = round(time.time() - started, 1)
        stage.state.stage(stage.name)["wall_seconds"] = elapsed
        stage.state.save()
        print(f"{stage.name}: finished in {elapsed:.0f} s; outputs in {stage.ctx.workspace}", flush=True)
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print(f"stages: {', '.join(available_stages())}")
        print("example: python -m rfcx_lightning.run stage=bootstrap preset=smoke workspace=/tmp/ws")
        return 0
    cfg = load_config([a for a in argv if a != "--cfg"])
    if "--cfg" in argv:
        print(OmegaConf.to_yaml(cfg))
        return 0
    run(cfg, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
