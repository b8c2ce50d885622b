"""Which labelled items a readout trains and tests on: the split, and the max_train / max_test subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aiaudio.eval.labelled import LabelledDataConfig, train_test_rows


def test_train_and_test_rows_follow_the_split_and_keep_every_item_without_limits():
    is_test = np.array([False, True, False, False, True, False])
    train, test = train_test_rows(is_test, LabelledDataConfig())
    assert train.tolist() == [0, 2, 3, 5] and test.tolist() == [1, 4]


def test_limits_keep_a_seeded_subset_of_each_side_and_never_move_an_item_across():
    is_test = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.3
    data = LabelledDataConfig(max_train=100, max_test=40, seed=3)
    train, test = train_test_rows(is_test, data)
    assert len(train) == 100 and len(test) == 40
    assert not is_test[train].any() and is_test[test].all()
    assert bool((train[1:] > train[:-1]).all())  # in ascending order, no repeats
    again = train_test_rows(is_test, data)
    assert torch.equal(again[0], train) and torch.equal(again[1], test)
    other = train_test_rows(is_test, LabelledDataConfig(max_train=100, max_test=40, seed=4))
    assert not torch.equal(other[0], train)
    spread = train.float().mean().item()  # a random subset, not the first 100 training items
    assert 300 < spread < 700
    assert len(train_test_rows(is_test, LabelledDataConfig(max_train=10**6))[0]) == int((~is_test).sum())


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="max_train"):
        LabelledDataConfig(max_train=0)
