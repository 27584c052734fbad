"""The teacher set shared by the pseudo-label stages: selection and pinning, calibration, frame targets,
weights from box AUROC, sharpening."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rfcx_lightning.postprocessing import odds_scale_to_prior
from rfcx_lightning.pseudo.pool import PoolError, PseudoLabelPool, TeacherStack, calibrate, localize
from rfcx_lightning.pseudo.targets import crop_targets
from rfcx_lightning.pseudo.teachers import TeacherKeys, TeacherSet, TeacherSettings, box_auroc, sharpen, teacher_weights
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


def keys(**values) -> TeacherKeys:
    """A parsed stage block with the YAML's defaults (stages/stage/coteach.yaml) and ``values`` over them."""
    block = dict(teachers="all", teacher="mean", calibrate="prior", sharpen=1.0, weights="equal",
                 frame_targets="scaled")
    return TeacherKeys(**{**block, **values})


def settings(**values) -> TeacherSettings:
    return TeacherSettings.of(keys(**values), "coteach")


def test_settings_are_checked_with_the_stage_named():
    s = TeacherSettings.of(keys(teachers=["a", "b"], calibrate="Estimated", sharpen=0.65), "coteach")
    assert s == TeacherSettings(teachers=("a", "b"), calibrate="estimated", sharpen=0.65, frame_targets="scaled",
                                weights="equal")
    assert settings(calibrate=None, sharpen=None) == settings(calibrate="none", sharpen=1.0)
    assert settings(calibrate="null").calibrate == "none"
    with pytest.raises(ValueError, match="noisy_student.calibrate='odds': choose one of prior, estimated, none"):
        TeacherSettings.of(keys(calibrate="odds"), "noisy_student")
    with pytest.raises(ValueError, match=r"coteach.sharpen=-1.0: the temperature"):
        settings(sharpen=-1)
    with pytest.raises(ValueError, match="coteach.weights='mean': choose one of equal, best, skill"):
        settings(weights="mean")
    with pytest.raises(ValueError, match="coteach.frame_targets='odds': choose one of scaled, localized"):
        settings(frame_targets="odds")
    with pytest.raises(ValueError, match="coteach.teachers is empty"):
        settings(teachers=None)


def test_the_stage_blocks_hold_every_teacher_key():
    """The YAML is where the defaults live: each pool stage's block parses into its settings with no fallback."""
    from rfcx_lightning.config import load_config
    from rfcx_lightning.stages.coteach import CoteachModule
    from rfcx_lightning.stages.noisy_student import NoisyStudentSettings
    from rfcx_lightning.settings import from_block

    from omegaconf import OmegaConf

    coteach = CoteachModule.settings_of(OmegaConf.to_container(load_config(["stage=coteach"]), resolve=True))
    assert TeacherSettings.of(coteach, "coteach").teachers == "all"
    noisy = from_block(NoisyStudentSettings, OmegaConf.to_container(
        load_config(["stage=noisy_student"]).noisy_student, resolve=True), "noisy_student")
    assert TeacherSettings.of(noisy, "noisy_student").calibrate == "prior"


def test_localized_frames_keep_where_from_the_frames_and_how_likely_from_the_clip():
    """Background at the median goes to 0, the peak takes the calibrated clip score, order in time is kept;
    a flat row spreads the clip score. Odds scaling instead lifts a common species' background."""
    frames = np.full((1, 2, 10), 0.3, np.float32)
    frames[0, 0, 4:6] = [0.5, 0.7]                          # a call on a diffuse 0.3 background
    out = localize(frames, np.array([[0.9, 0.4]]))
    np.testing.assert_allclose(out[0, 0], [0, 0, 0, 0, 0.45, 0.9, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], 0.4)                # flat: no peak to localise
    common = TeacherStack(names=["t"], recording_ids=["a"], clip=frames.max(-1)[None], framewise=frames[None].copy(),
                          frames_per_second=1.0)
    scaled = calibrate(common, np.array([0.95, 0.5]), "scaled").framewise[0, 0, 0, 0]
    assert scaled > 0.75                                      # 0.3 -> 0.78: odds x ~8 on the background
    localized = TeacherStack(names=["t"], recording_ids=["a"], clip=frames.max(-1)[None],
                             framewise=frames[None].copy(), frames_per_second=1.0)
    calibrate(localized, np.array([0.95, 0.5]), "localized")
    assert localized.framewise[0, 0, 0, 0] == 0
    peak = localized.framewise[0, 0, 0].astype(np.float32).max()
    np.testing.assert_allclose(peak, localized.clip[0, 0, 0], atol=1e-3)      # max over time = the clip score
    with pytest.raises(ValueError, match="frame_targets must be one of"):
        calibrate(localized, np.array([0.95, 0.5]), "peaks")


def test_box_auroc_ranks_tp_boxes_above_fp_boxes_per_class():
    frames = np.zeros((2, 2, 60), np.float32)                # 1 frame per second
    frames[0, 0, 10:12] = 0.9                                # class 0: TP box scores high, FP box low
    frames[1, 0, 30:32] = 0.2
    frames[0, 1, 40:42] = 0.1                                # class 1: inverted
    frames[1, 1, 5:7] = 0.8
    boxes = pd.DataFrame({"recording_id": ["a", "b", "a", "b", "c"], "class_index": [0, 0, 1, 1, 0],
                          "t_min": [10.0, 30.0, 40.0, 5.0, 1.0], "t_max": [11.5, 31.5, 41.5, 6.5, 2.0],
                          "is_tp": [True, False, True, False, True]})   # "c": not predicted, ignored
    assert box_auroc(frames, ["a", "b"], boxes, 60.0) == pytest.approx(0.5)   # (1 + 0) / 2
    assert box_auroc(frames, ["a", "b"], boxes[boxes.class_index == 0], 60.0) == 1.0
    assert np.isnan(box_auroc(frames, ["a", "b"], boxes[boxes.is_tp], 60.0))   # no class with both kinds


def test_teacher_weights_follow_the_rule():
    np.testing.assert_allclose(teacher_weights([0.75, 0.63], "equal"), [0.5, 0.5])
    np.testing.assert_allclose(teacher_weights([0.75, 0.63], "best"), [1.0, 0.0])
    np.testing.assert_allclose(teacher_weights([0.75, 0.70], "skill"), [0.0625 / 0.1025, 0.04 / 0.1025])
    np.testing.assert_allclose(teacher_weights([0.4, np.nan], "skill"), [0.5, 0.5])   # none above chance
    np.testing.assert_allclose(teacher_weights([0.6], "best"), [1.0])
    with pytest.raises(ValueError, match="weights must be one of"):
        teacher_weights([0.6, 0.7], "max")


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
    teachers = TeacherSet(stage, settings(teachers="all", calibrate="prior", sharpen=0.5))
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
    teachers = TeacherSet(stage, settings(teachers="all", calibrate="none"))
    assert [e.name for e in teachers.entries()] == ["round0_template"]       # never itself
    assert RunState(two_teachers).stage("round1_bootstrap")["teachers"] == ["round0_template"]
    paths = write_stage(two_teachers, "round2_coteach", 9)                   # the pool grows ...
    PseudoLabelPool(two_teachers).add("round2_coteach", "coteach", paths["oof"], paths["test"])
    again = TeacherSet(FakeStage(two_teachers, name="round1_bootstrap"), settings(teachers="all"))
    assert [e.name for e in again.entries()] == ["round0_template"]           # ... a resumed run keeps its set
    with pytest.raises(ValueError, match="coteach.calibrate=prior needs score.prior"):
        TeacherSet(FakeStage(two_teachers), settings(calibrate="prior")).prior()
    with pytest.raises(PoolError, match="stage=coteach: pool has no teacher named"):
        TeacherSet(FakeStage(two_teachers, name="round5_coteach"), settings(teachers=("nope",))).entries()


def test_weighted_teachers_become_one_and_the_weights_are_recorded(two_teachers):
    """weights=best keeps the teacher whose OOF frames rank the TP boxes above the FP boxes; state.json says why."""
    stage = FakeStage(two_teachers, prior=np.array([0.9, 0.2, 0.05]))
    raw = PseudoLabelPool(two_teachers, writable=False).load(
        TeacherSet(stage, settings(teachers="all")).entries(), "train", IDS)
    f = raw.framewise.astype(np.float32)                  # boxes where teacher 1 is right and teacher 0 wrong
    rows = []
    for r, rid in enumerate(IDS):
        for c in range(C):
            hi, lo = int(f[1, r, c].argmax()), int(f[1, r, c].argmin())
            rows += [(rid, c, hi / 2.0, hi / 2.0 + 0.4, True), (rid, c, lo / 2.0, lo / 2.0 + 0.4, False)]
    boxes = pd.DataFrame(rows, columns=["recording_id", "class_index", "t_min", "t_max", "is_tp"])
    stage.ctx.boxes, stage.ctx.train = boxes, SimpleNamespace(recording_ids=IDS)
    stage.cfg = SimpleNamespace(data=SimpleNamespace(duration_s=60.0))
    teachers = TeacherSet(stage, settings(teachers="all", calibrate="none", weights="best"))
    stack = teachers.load("test", IDS)
    assert stack.n_teachers == 1 and stack.names == ["1.00*round1_bootstrap"]
    alone = TeacherSet(FakeStage(two_teachers, name="x"), settings(teachers=("round1_bootstrap",),
                                                                        calibrate="none")).load("test", IDS)
    np.testing.assert_allclose(stack.framewise.astype(np.float32), alone.framewise.astype(np.float32), atol=1e-3)
    record = RunState(two_teachers).stage("round2_coteach")["teacher_weights"]
    assert record["round1_bootstrap"] == {"weight": 1.0, "box_auroc": 1.0}
    assert record["round0_template"]["weight"] == 0.0 and record["round0_template"]["box_auroc"] < 1.0
