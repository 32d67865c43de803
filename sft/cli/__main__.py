"""`python -m sft.cli` (what torchrun launches) is the `sft` command."""

import sys

from sft.cli import main

sys.exit(main())
