"""Modality-agnostic evaluation: episodes, invariance + readout learners, many-shot readout, measurement, plots.

Everything here takes an encoder ``f(x, i)`` and tensors; nothing imports the audio layer.
"""
