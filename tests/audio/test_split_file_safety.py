"""MetaAudio split files are read without executing anything a pickle asks for."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from aiaudio.audio.datasets import DatasetError
from aiaudio.audio.metaaudio import load_split_file


class _Evil:
    """An object whose unpickling runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.timeout(60)
def test_a_split_file_that_pickles_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    lists = np.empty(3, dtype=object)
    lists[0], lists[1], lists[2] = ["a", "b"], [_Evil(marker)], ["c"]
    path = tmp_path / "evil.npy"
    np.save(path, lists, allow_pickle=True)
    assert not marker.exists()

    with pytest.raises(DatasetError, match=r"evil\.npy.*(system|refus)") as caught:
        load_split_file(path)

    assert isinstance(caught.value, ValueError)
    assert not marker.exists(), "loading the split file ran the command it pickles"


def test_split_files_of_plain_arrays_and_numpy_strings_still_load(tmp_path):
    lists = np.empty(3, dtype=object)
    lists[0] = ["b", "a"]
    lists[1] = [np.str_("c")]  # numpy string scalars pickle through numpy's scalar rebuilder
    lists[2] = np.array(["d", "e"])  # an array inside the object array
    path = tmp_path / "split.npy"
    np.save(path, lists, allow_pickle=True)
    assert load_split_file(path) == (["b", "a"], ["c"], ["d", "e"])
    np.save(tmp_path / "strings.npy", np.array(["a", "b", "c"]))  # no pickle at all: read as before
    assert load_split_file(tmp_path / "strings.npy") == (["a"], ["b"], ["c"])
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(DatasetError, match=r"text\.npy is not a readable NumPy file"):
        load_split_file(tmp_path / "text.npy")

