"""Amortised invariance learning for images, on the shared core of ``aiaudio`` (never a copy of it).

Importing this package registers the Prompt-ViT encoders with timm; ``hyper_resnet50`` and ``plain_resnet50`` come
from the core.
"""

import aivision.models  # noqa: F401  (registers prompt_vit_* with timm)

__version__ = "0.1.0"
