"""``python -m rfcx_lightning.bench``: see :mod:`rfcx_lightning.bench.cli`."""

import sys

from .cli import main

sys.exit(main())
