"""Post-processing of model outputs: calibration toward a prior, top-k distribution matching, temporal
smoothing, clip aggregation, ensembling, and the statistics and figures the dashboards show.

Each module is a handful of pure numpy functions with one job; :mod:`rfcx_lightning.postprocess` is the
public entry point (used by the stage runner, the pseudo-label pool and ``stage=postprocess``).
"""
