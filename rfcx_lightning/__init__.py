"""rfcx_lightning: species detectors for passive acoustic monitoring, trained from sparse TP/FP boxes.

Data flow, one subpackage per step:
    data (annotations, audio cache, label grids, folds, datamodule, synthetic soundscapes)
      -> features (log-mel front-end on the accelerator, augmentation)
      -> models (timm backbone + framewise / SED heads)
      -> losses, metrics
      -> stages (one LightningModule per stage on a shared base)
      -> inference (whole-recording framewise prediction, DDP-safe prediction writer)
      -> run (Hydra CLI orchestrating folds and writing the workspace)
"""

__version__ = "0.1.0"
