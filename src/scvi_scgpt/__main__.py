"""``python -m scvi_scgpt``: the ``scvi-scgpt`` command line."""

import sys

from scvi_scgpt._cli import main

sys.exit(main())
