"""`python -m vla_distill <stage> ...` (what `torchrun -m vla_distill train ...` runs): the CLI."""

import sys

from vla_distill.cli import main

sys.exit(main())
