"""``python -m aivision ...`` (as torchrun needs: ``torchrun --nproc_per_node=8 -m aivision pretrain CONFIG``)."""

import sys

from aivision.cli import main

sys.exit(main())
