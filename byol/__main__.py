"""`python -m byol ...`: see byol/cli.py."""

import sys

from .cli import main

sys.exit(main())
