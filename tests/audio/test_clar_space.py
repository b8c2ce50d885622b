"""The CLAR space lives on the audio side and is still re-exported at the top of the package."""

from __future__ import annotations

import pytest
import torch

from aiaudio.audio.augment import active_ops


def test_clar_names_are_the_audio_sides_and_still_reexported() -> None:
    import aiaudio
    from aiaudio.audio.clar import CLAR_NAMES, clar_space

    assert aiaudio.CLAR_NAMES is CLAR_NAMES and aiaudio.clar_space is clar_space
    assert len(aiaudio.clar_space()) == 120
    with pytest.raises(AttributeError):
        aiaudio.no_such_name  # noqa: B018


def test_active_ops_reads_names_from_the_space_it_is_given() -> None:
    from aiaudio.invariance import InvarianceSpace

    assert active_ops(torch.tensor([0.4, 0.6, 0, 0, 0, 0, 1])) == ["fade_in", "time_stretch"]
    assert active_ops(torch.tensor([1.0, 0.0]), InvarianceSpace(["spatial", "appearance"])) == ["spatial"]
    with pytest.raises(ValueError, match="7"):
        active_ops(torch.ones(3))
