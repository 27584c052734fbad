"""Reporting: experiment loggers (CSV, TensorBoard, W&B offline), the workspace dashboard, figures and
statistics of rounds and pseudo labels. It reads what the stages wrote and changes no prediction; the
``stage=report`` table lives in :mod:`rfcx_lightning.stages.report`."""
