import itertools
import math

import pytest
import torch

from aiaudio.invariance import InvarianceSpace

#: Seven factor names, as the audio space has (the core knows no modality: these are just names).
NAMES = ("pitch", "fade_in", "fade_out", "noise", "mask", "shift", "stretch")


def seven_factor_space() -> InvarianceSpace:
    return InvarianceSpace(NAMES, min_active=2)


def test_descriptor_counts_match_binomial_sums():
    # sum_{k >= m} C(K, k): 7 ops with >= 2 on -> 120; 5 ops with >= 2 -> 26; 2 groups with >= 1 -> 3.
    for k, m in [(7, 2), (5, 2), (2, 1), (3, 0)]:
        space = InvarianceSpace([f"f{j}" for j in range(k)], min_active=m)
        assert len(space) == sum(math.comb(k, j) for j in range(m, k + 1))
    assert len(seven_factor_space()) == 120
    assert seven_factor_space().names == NAMES


def test_table_is_exactly_the_binary_vectors_with_enough_bits():
    space = InvarianceSpace(["a", "b", "c", "d"], min_active=2)
    expected = {bits for bits in itertools.product((0.0, 1.0), repeat=4) if sum(bits) >= 2}
    got = {tuple(row.tolist()) for row in space.table}
    assert got == expected and len(got) == len(space)


def test_sampling_is_seeded_and_covers_the_table():
    space = seven_factor_space()
    a = [space.sample(torch.Generator().manual_seed(3)) for _ in range(1)]
    b = [space.sample(torch.Generator().manual_seed(3)) for _ in range(1)]
    assert torch.equal(a[0], b[0])
    seen = {tuple(space.descriptor_for_step(seed=7, step=s).tolist()) for s in range(4000)}
    assert len(seen) == 120  # uniform over 120 rows: all seen in 4000 draws with overwhelming probability
    assert all(sum(d) >= 2 for d in seen)
    assert torch.equal(space.descriptor_for_step(1, 5), space.descriptor_for_step(1, 5))
    draws = torch.stack([space.descriptor_for_step(1, s) for s in range(50)])
    assert len({tuple(d.tolist()) for d in draws}) > 20


def test_quantisation_to_b_bits():
    space = seven_factor_space()
    x = torch.tensor([0.0, 0.1, 0.26, 0.5, 0.74, 0.9, 1.0])
    assert space.quantize(x, 1).tolist() == [0, 0, 0, 0, 1, 1, 1]  # ties round to even, as torch.round does
    q2 = space.quantize(x, 2) * 3
    assert torch.allclose(q2, torch.round(x * 3))
    assert set(space.quantize(torch.rand(7), 3).mul(7).round().tolist()) <= set(range(8))
    with pytest.raises(ValueError):
        space.quantize(x, 0)


def test_vector_mapping_round_trip_and_errors():
    space = seven_factor_space()
    mapping = {name: 0.1 * j for j, name in enumerate(NAMES)}
    vector = space.to_vector(mapping)
    assert torch.allclose(vector, torch.arange(7) * 0.1)
    assert space.to_mapping(vector) == pytest.approx(mapping)
    with pytest.raises(KeyError, match="missing"):
        space.to_vector({k: v for k, v in mapping.items() if k != "noise"})
    with pytest.raises(KeyError, match="unknown"):
        space.to_vector({**mapping, "reverb": 1.0})
    with pytest.raises(ValueError, match="entries"):
        space.to_vector([1.0, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        space.to_vector([2.0] * 7)


def test_parse_text_forms():
    space = seven_factor_space()
    text = ",".join(f"{n}={v}" for n, v in zip(NAMES, [0.2, 1, 0, 0, 1, 0, 0.5]))
    assert space.parse(text).tolist() == pytest.approx([0.2, 1, 0, 0, 1, 0, 0.5])
    assert space.parse("1,1,0,0,0,0,1").tolist() == [1, 1, 0, 0, 0, 0, 1]
    assert space.name_of(space.parse("1,1,0,0,0,0,1")) == "pitch+fade_in+stretch"
    with pytest.raises(ValueError):
        space.parse("pitch_shift=1,0.5")


def test_invalid_spaces():
    with pytest.raises(ValueError):
        InvarianceSpace(["a", "a"])
    with pytest.raises(ValueError):
        InvarianceSpace(["a"], min_active=2)


def test_active_names_reads_the_space_and_checks_the_length():
    space = InvarianceSpace(["crop", "flip", "jitter"], min_active=1)
    assert space.active_names(torch.tensor([0.4, 0.6, 1.0])) == ["flip", "jitter"]
    assert space.active_names([0, 0, 0]) == []
    with pytest.raises(ValueError, match="3"):
        space.active_names(torch.ones(7))
