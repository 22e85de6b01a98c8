import numpy as np
import pytest

from align.adapt.shots import ShotError, base_classes, check_shots, draw_shots, parse_ints

LABELS = np.repeat(np.arange(3), [5, 8, 2])  # class 2 has only 2 rows
NAMES = ["cat", "dog", "owl"]


def test_draws_are_seeded_per_class_and_nested_over_shots():
    a = draw_shots(LABELS, [0, 1], 3, seed=7)
    assert np.array_equal(a, draw_shots(LABELS, [0, 1], 3, seed=7))  # the same draw for every method
    assert not np.array_equal(a, draw_shots(LABELS, [0, 1], 3, seed=8))
    assert sorted(np.bincount(LABELS[a]).tolist()) == [3, 3]
    small, big = set(draw_shots(LABELS, [0, 1], 2, seed=7)), set(draw_shots(LABELS, [0, 1], 4, seed=7))
    assert small <= big and set(a) <= big  # the 2-shot set is inside the 3- and 4-shot sets


def test_too_few_examples_names_the_class_and_its_count():
    with pytest.raises(ShotError, match=r"4 shots per class asked, but 'owl' has 2 training"):
        check_shots([1, 4], LABELS, NAMES, [0, 1, 2])
    check_shots([1, 4], LABELS, NAMES, [0, 1])  # base classes only: fine
    with pytest.raises(ShotError, match=r"\['bat'\] have no examples"):
        check_shots([1], LABELS, NAMES + ["bat"], [0, 3])
    with pytest.raises(ShotError, match="positive"):
        check_shots([0, 2], LABELS, NAMES, [0])


def test_base_classes_by_name_or_index():
    assert base_classes("dog,0", NAMES) == [0, 1]
    with pytest.raises(ShotError, match="'emu' is neither"):
        base_classes("emu", NAMES)
    with pytest.raises(ShotError, match="some but not all"):
        base_classes("0,1,2", NAMES)
    assert parse_ints("1, 2,16", "--shots") == [1, 2, 16]
    with pytest.raises(ShotError, match="--shots must be comma-separated integers"):
        parse_ints("1,two", "--shots")
