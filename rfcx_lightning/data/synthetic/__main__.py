"""``python -m rfcx_lightning.data.synthetic ROOT [options]``."""

import sys

from .cli import main

sys.exit(main())
