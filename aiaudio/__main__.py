"""``python -m aiaudio ...`` (as torchrun needs: ``torchrun --nproc_per_node=8 -m aiaudio pretrain CONFIG``)."""

import sys

from aiaudio.cli import main

sys.exit(main())
