"""The workspace's W&B dashboard, logged by ``stage=postprocess``: scores per round, pseudo-label statistics,
post-processing factors, per-class AP and example spectrograms (training curves are the stages' own
loggers', :mod:`.loggers`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .loggers import build_logger


def log_postprocess_dashboard(logger_cfg: DictConfig, ctx, state, name: str, sources: list[str], chosen: dict,
                              options, inference_rows: list[dict], n_examples: int = 3) -> Path | None:
    """One W&B run (job type = the post-processing run's name) with the workspace's dashboard.

    Logged: ``lb/*`` the LWLRAP of every stage run / round in ``state.json`` (line chart and table),
    ``pseudo/*`` pseudo-label statistics per round (positives per class, mean confidence),
    ``postprocess/options`` every option's scores, ``postprocess/factors`` the calibration factors,
    ``postprocess/per_class_ap`` a bar chart where clip labels are known, ``inference/modes`` the inference
    comparison, and ``examples/spectrograms`` train recordings with their TP/FP boxes and the OOF framewise
    predictions of those classes. Training curves and validation scores are logged by the stages' own
    WandbLogger. Returns the local run directory.
    """
    import numpy as np
    import wandb

    from .figures import spectrogram_with_boxes
    from ..postprocessing.sources import load_stage_outputs
    from .stats import per_class_ap, pseudo_label_stats, round_scores
    from ..postprocessing import odds_scale_to_prior

    logger = build_logger(logger_cfg, ctx.workspace, name, "dashboard")
    run = logger.experiment
    species = [f"s{s}" for s in ctx.species]

    rounds = round_scores(state)
    score_keys = sorted({k for r in rounds for k in r if k.endswith("_lwlrap")})
    for row in rounds:
        run.log({"lb/round": row["order"], **{f"lb/{k}": row[k] for k in score_keys if k in row}})
    if rounds:
        lb_table = wandb.Table(columns=["order", "name"] + score_keys,
                               data=[[r["order"], r["name"]] + [r.get(k) for k in score_keys] for r in rounds])
        payload = {"lb/table": lb_table}
        if "test_lwlrap" in score_keys:
            payload["lb/test_lwlrap_per_round"] = wandb.plot.line(lb_table, "order", "test_lwlrap",
                                                                  title="test LWLRAP per round")
        run.log(payload)

    for order, stage_name in enumerate(n for n in state.data.get("stages", {}) if n != name):
        entry = state.stage(stage_name)
        if "test_framewise.npz" not in entry.get("outputs", {}):
            continue
        outputs = load_stage_outputs(state, stage_name, list(ctx.train.recording_ids), ctx.test_ids, per_fold=False)
        clip = ctx.scheme.to_species_scores(np.concatenate([outputs.oof_clip, outputs.test_clip[0]]))
        if ctx.prior is not None:
            clip = odds_scale_to_prior(clip, ctx.prior)
        stats = pseudo_label_stats(clip)
        table = wandb.Table(columns=["class", "positives", "mean_confidence"],
                            data=[[c, int(p), None if np.isnan(m) else float(m)]
                                  for c, p, m in zip(species, stats["positives"], stats["mean_confidence"])])
        run.log({f"pseudo/{stage_name}/positives": wandb.plot.bar(table, "class", "positives",
                                                                  title=f"{stage_name}: positive clips per class"),
                 "pseudo/round": order, "pseudo/positive_rate": stats["positive_rate"],
                 "pseudo/mean_confidence": stats["mean_confidence_all"]})

    run.log({"postprocess/options": wandb.Table(dataframe=options)})
    factors = chosen["test"][1].factors
    if factors:
        keys = list(factors)
        run.log({"postprocess/factors": wandb.Table(
            columns=["class"] + keys, data=[[c] + [float(factors[k][i]) for k in keys] for i, c in enumerate(species)])})
    if ctx.test_truth is not None:
        truth = ctx.test_truth[species].to_numpy() > 0
        ap = per_class_ap(chosen["test"][1].scores, truth)
        table = wandb.Table(columns=["class", "ap"], data=[[c, float(a)] for c, a in zip(species, ap) if np.isfinite(a)])
        run.log({"postprocess/per_class_ap": wandb.plot.bar(table, "class", "ap", title="test AP per class")})
    if inference_rows:
        columns = list(inference_rows[0])
        run.log({"inference/modes": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in inference_rows])})

    run.log({"examples/spectrograms": _example_images(ctx, state, sources[-1], n_examples, spectrogram_with_boxes)})
    run.summary.update({f"postprocess/{k}": v for k, v in state.stage(name).get("metrics", {}).items()})
    run_dir = Path(run.dir).parent
    logger.finalize("success")
    run.finish()
    return run_dir


def _example_images(ctx, state, source: str, n: int, render) -> list:
    """Train recordings with the most boxes, their boxes, and the OOF framewise scores of those classes."""
    import wandb

    from ..postprocessing.sources import load_stage_outputs

    outputs = load_stage_outputs(state, source, list(ctx.train.recording_ids), ctx.test_ids, per_fold=False)
    row = {r: i for i, r in enumerate(ctx.train.recording_ids)}
    boxes = ctx.boxes
    busiest = boxes["recording_id"].value_counts().index[:n]
    images = []
    for rid in busiest:
        rec = boxes[boxes["recording_id"] == rid]
        classes = sorted(rec["class_index"].unique())[:5]
        names = [ctx.scheme.class_names[c] for c in classes]
        wave = ctx.cache.read("train", rid)
        drawn = [dict(t_min=b.t_min, t_max=b.t_max, f_min=b.f_min, f_max=b.f_max, is_tp=bool(b.is_tp),
                      label=ctx.scheme.class_names[b.class_index]) for b in rec.itertuples()]
        image = render(wave, int(ctx.cfg.audio.sample_rate), drawn,
                       outputs.oof_framewise[row[rid], classes].astype("float32"), names)
        images.append(wandb.Image(image, caption=f"{rid}: TP green, FP red; OOF framewise {', '.join(names)}"))
    return images
