"""The configuration tree and the typed settings built from its blocks (rfcx_lightning/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rfcx_lightning.data.audio import AudioSettings
from rfcx_lightning.data.datamodule import CropSettings, LoaderSettings
from rfcx_lightning.detection.stage import DetectSettings
from rfcx_lightning.features.augment import AugmentSettings
from rfcx_lightning.models.factory import ModelSettings
from rfcx_lightning.orchestration.pipeline import PipelineSettings
from rfcx_lightning.postprocessing.chain import PostprocessSettings
from rfcx_lightning.run import available_stages, config_dir, load_config
from rfcx_lightning.settings import from_block
from rfcx_lightning.stages.base import OptimSettings
from rfcx_lightning.stages.bootstrap import BootstrapSettings
from rfcx_lightning.stages.context import ScoreSettings
from rfcx_lightning.stages.coteach import CoteachSettings
from rfcx_lightning.stages.noisy_student import NoisyStudentSettings
from rfcx_lightning.stages.oracle import OracleSettings
from rfcx_lightning.stages.pretrain import PretrainSettings
from rfcx_lightning.stages.template import TemplateSettings


@dataclass(frozen=True)
class Inner:
    on: bool


@dataclass(frozen=True)
class Block:
    rate: float
    count: int
    name: str
    limit: int | None
    inner: Inner


GOOD = dict(rate=1, count=3, name="a", limit=None, inner=dict(on=True))


def test_a_block_builds_with_its_types_and_nested_blocks():
    block = from_block(Block, GOOD, "x")
    assert block == Block(rate=1.0, count=3, name="a", limit=None, inner=Inner(on=True))
    assert isinstance(block.rate, float)


@pytest.mark.parametrize("change, message", [
    (dict(rtae=0.1), r"unknown key\(s\) x\.rtae"),
    (dict(inner=dict(on=True, off=False)), r"unknown key\(s\) x\.inner\.off"),
    (dict(count=2.5), r"x\.count=2\.5: expected an integer"),
    (dict(count=True), r"x\.count=True: expected an integer"),
    (dict(rate="fast"), r"x\.rate='fast': expected a number"),
    (dict(inner=dict(on="yes")), r"x\.inner\.on='yes': expected true or false"),
    (dict(limit="none"), r"x\.limit='none': expected an integer"),
])
def test_a_wrong_key_or_value_is_an_error_naming_it(change, message):
    with pytest.raises(ValueError, match=message):
        from_block(Block, {**GOOD, **change}, "x")


def test_a_missing_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"missing key\(s\) x\.name"):
        from_block(Block, {k: v for k, v in GOOD.items() if k != "name"}, "x")


# every block that has a settings class, built from every recipe that carries it, under every preset
BLOCKS = {"coteach": CoteachSettings, "noisy_student": NoisyStudentSettings, "detect": DetectSettings,
          "crops": CropSettings, "loader": LoaderSettings, "audio": AudioSettings, "model": ModelSettings,
          "optim": OptimSettings, "augment": AugmentSettings, "bootstrap": BootstrapSettings,
          "oracle": OracleSettings, "template": TemplateSettings,
          "pretrain": PretrainSettings, "score": ScoreSettings, "postprocess": PostprocessSettings}


@pytest.mark.parametrize("preset", ["quick", "cpu", "full", "smoke"])
def test_every_recipe_composes_and_its_blocks_build(preset):
    assert (config_dir() / "config.yaml").is_file() and (config_dir() / "stage" / "bootstrap.yaml").is_file()
    for stage in available_stages():
        cfg = load_config([f"stage={stage}", f"preset={preset}"])
        assert cfg.stage.name == stage
        for key, cls in BLOCKS.items():
            if key in cfg:
                assert isinstance(from_block(cls, cfg[key], key), cls)
        if stage == "pipeline":
            assert PipelineSettings.from_cfg(cfg.pipeline).max_rounds == 6   # the recipe's value: no second default


def test_the_defaults_list_is_written_once_bootstrap_on_the_quick_preset():
    cfg = load_config([])
    assert cfg.stage.name == "bootstrap" and cfg.folds == 2 and "lb" not in cfg and "pipeline" not in cfg
    # quick is the cpu preset with a shorter schedule: everything else comes from cpu, written once there
    full = load_config(["preset=cpu"])
    assert full.folds == 3 and full.trainer.max_epochs == 14 and full.trainer.check_val_every_n_epoch == 1
    assert cfg.trainer.check_val_every_n_epoch == cfg.trainer.max_epochs == 10   # validated once, at the end
    assert cfg.model.frontend == full.model.frontend and cfg.optim == full.optim and cfg.loader == full.loader
    assert load_config(["stage=pipeline"]).lb.kind == "holdout"            # the pipeline recipe's choice
    assert load_config(["stage=pipeline", "lb=none"]).lb.kind == "none"     # the command line wins
    for recipe in (config_dir() / "stage").glob("*.yaml"):                  # no recipe repeats the list
        assert "searchpath" not in recipe.read_text() and "- base" not in recipe.read_text(), recipe


def test_keys_live_in_the_block_of_the_stage_that_reads_them():
    """Weak negatives are the bootstrap's (and the oracle's, which composes the bootstrap recipe); the odds
    scaling of every stage's submission sits with the prior it scales to, in score:."""
    assert load_config(["stage=bootstrap"]).bootstrap.negatives.per_crop == 0
    oracle = load_config(["stage=oracle", "bootstrap.negatives.per_crop=2"])
    assert oracle.stage.name == "oracle" and oracle.bootstrap.negatives.per_crop == 2
    for stage in ("coteach", "noisy_student", "template", "pipeline"):
        assert "bootstrap" not in load_config([f"stage={stage}"]) and "negatives" not in load_config([f"stage={stage}"])
    assert load_config([]).score.odds_to_prior is True and "odds_to_prior" not in load_config([]).postprocess
    assert load_config(["stage=noisy_student"]).score.odds_to_prior is False   # its targets are already scaled


def test_a_misspelt_key_added_to_a_block_names_the_key():
    cfg = load_config(["stage=coteach", "+coteach.wieghts=best"])
    with pytest.raises(ValueError, match=r"coteach\.wieghts"):
        from_block(CoteachSettings, cfg.coteach, "coteach")
    with pytest.raises(ValueError, match=r"pipeline\.max_round\b"):
        PipelineSettings.from_cfg(load_config(["stage=pipeline", "+pipeline.max_round=3"]).pipeline)
    with pytest.raises(ValueError, match=r"template\.fp_wieght"):
        from_block(TemplateSettings, load_config(["stage=template", "+template.fp_wieght=1"]).template, "template")
    with pytest.raises(ValueError, match=r"crops\.min_per_epcoh"):
        from_block(CropSettings, load_config(["+crops.min_per_epcoh=3"]).crops, "crops")
