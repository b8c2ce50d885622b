"""Audio: I/O, datasets, log-mel frontend and batched CLAR augmentations."""
