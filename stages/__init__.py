"""The configuration tree (Hydra YAML): ``config.yaml`` at its root, the stage recipes as the group ``stage/``
beside the groups ``data/``, ``preset/``, ``logger/``, ``lb/`` and ``rounds/``. Installed as the package
``rfcx_lightning.conf``."""
