"""The teacher set shared by the pseudo-label stages: selection and pinning, calibration, sharpening."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rfcx_lightning.postprocess import odds_scale_to_prior
from rfcx_lightning.pseudo.pool import PoolError, PseudoLabelPool
from rfcx_lightning.pseudo.targets import crop_targets
from rfcx_lightning.pseudo.teachers import TeacherSet, TeacherSettings, sharpen
from rfcx_lightning.workspace import RunState

from .test_pool import C, IDS, write_stage


def test_sharpen_is_a_power_that_keeps_order_and_the_identity_at_one():
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float16)
    assert sharpen(p, 1.0) is p
    sharp = sharpen(p, 0.5)
    assert sharp.dtype == np.float16
    np.testing.assert_allclose(sharp.astype(float), [0.0, 0.01, 0.25, 0.81, 1.0], atol=2e-3)
    assert (np.diff(sharp.astype(float)) >= 0).all()                       # ranking unchanged
    np.testing.assert_allclose(sharpen(np.float32([0.25]), 2.0), [0.5])     # T > 1 softens
    with pytest.raises(ValueError, match="must be > 0"):
        sharpen(p, 0.0)


def test_settings_are_checked_with_the_stage_named():
    s = TeacherSettings.from_block({"teachers": ["a", "b"], "calibrate": "Estimated", "sharpen": 0.65}, "coteach")
    assert s == TeacherSettings(teachers=("a", "b"), calibrate="estimated", sharpen=0.65)
    assert TeacherSettings.from_block({"calibrate": None}, "x", default_teachers="all").teachers == "all"
    assert TeacherSettings.from_block({"calibrate": "null", "sharpen": None}, "x").calibrate == "none"
    with pytest.raises(ValueError, match="noisy_student.calibrate='odds': choose one of prior, estimated, none"):
        TeacherSettings.from_block({"calibrate": "odds"}, "noisy_student")
    with pytest.raises(ValueError, match=r"coteach.sharpen=-1.0: the temperature"):
        TeacherSettings.from_block({"sharpen": -1}, "coteach")


class FakeStage:
    """What TeacherSet asks of a stage: a name, a kind, state.json, the context's prior and scheme."""

    def __init__(self, workspace, name="round2_coteach", prior=None):
        self.name, self.kind = name, "coteach"
        self.state = RunState(workspace)
        self.ctx = SimpleNamespace(workspace=workspace, prior=prior,
                                   scheme=SimpleNamespace(species_of_class=np.arange(C)))


@pytest.fixture
def two_teachers(tmp_path):
    pool = PseudoLabelPool(tmp_path)
    for seed, name in enumerate(["round0_template", "round1_bootstrap"]):
        paths = write_stage(tmp_path, name, seed)
        pool.add(name, name.split("_")[-1], paths["oof"], paths["test"])
    return tmp_path


def test_all_teachers_are_the_mean_of_their_calibrated_probabilities(two_teachers):
    """Two teachers on different scales: each is odds-scaled to the prior first, then sharpened, then averaged
    by the stages' 'mean' teacher."""
    prior = np.array([0.9, 0.2, 0.05])
    stage = FakeStage(two_teachers, prior=prior)
    teachers = TeacherSet(stage, TeacherSettings(teachers="all", calibrate="prior", sharpen=0.5))
    stack = teachers.load("train", IDS)
    assert stack.names == ["round0_template", "round1_bootstrap"]
    raw = PseudoLabelPool(two_teachers, writable=False).load(teachers.entries(), "train", IDS)
    for k in range(2):
        reference = raw.clip[k].astype(np.float64).mean(0)
        expected = odds_scale_to_prior(raw.clip[k], prior, reference) ** 2
        np.testing.assert_allclose(stack.clip[k], expected, rtol=1e-4, atol=1e-6)
    mean = crop_targets(stack, "mean", 1, 0.0, 60.0, 120)
    np.testing.assert_allclose(mean, stack.framewise[:, 1].astype(np.float32).mean(0), atol=1e-6)


def test_the_choice_is_pinned_and_never_includes_the_run_itself(two_teachers):
    stage = FakeStage(two_teachers, name="round1_bootstrap")
    teachers = TeacherSet(stage, TeacherSettings(teachers="all", calibrate="none"))
    assert [e.name for e in teachers.entries()] == ["round0_template"]       # never itself
    assert RunState(two_teachers).stage("round1_bootstrap")["teachers"] == ["round0_template"]
    paths = write_stage(two_teachers, "round2_coteach", 9)                   # the pool grows ...
    PseudoLabelPool(two_teachers).add("round2_coteach", "coteach", paths["oof"], paths["test"])
    again = TeacherSet(FakeStage(two_teachers, name="round1_bootstrap"), TeacherSettings(teachers="all"))
    assert [e.name for e in again.entries()] == ["round0_template"]           # ... a resumed run keeps its set
    with pytest.raises(ValueError, match="coteach.calibrate=prior needs score.prior"):
        TeacherSet(FakeStage(two_teachers), TeacherSettings(calibrate="prior")).prior()
    with pytest.raises(PoolError, match="stage=coteach: pool has no teacher named"):
        TeacherSet(FakeStage(two_teachers, name="round5_coteach"), TeacherSettings(teachers=("nope",))).entries()
