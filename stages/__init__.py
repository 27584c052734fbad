"""Stage recipes: one Hydra YAML per stage. Installed as the package ``rfcx_lightning.recipes``."""
