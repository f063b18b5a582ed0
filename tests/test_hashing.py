"""The one 64-bit hash mixer (dealrec_core.hashing) and the keys built on it: pinned outputs.

Selection draws and SASRec's negatives are keyed by these hashes, so a changed value would
change every coreset and every BCE-trained surrogate: the numbers below must never move.
"""
from __future__ import annotations

import numpy as np

from dealrec_core.hashing import GOLDEN, mix64, splitmix64
from dealrec.strata import sample_keys, uniform_keys
from surrogates.sasrec import hashed_negatives


def test_splitmix64_matches_the_reference_sequence():
    # Vigna's splitmix64.c seeded with 0: the state advances by GOLDEN before each output
    states = np.arange(4, dtype=np.uint64) * GOLDEN
    assert [int(x) for x in splitmix64(states)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    assert int(splitmix64(0)) == 0xE220A8397B1DCDAF  # scalars too


def test_mix64_is_the_finaliser():
    assert [int(x) for x in mix64(np.array([0, 1, 2**64 - 1], dtype=np.uint64))] == [
        0, 0x5692161D100B05E5, 0xB4D055FCF2CBBD7B]
    np.testing.assert_array_equal(mix64(np.array([5], np.uint64) + GOLDEN), splitmix64(np.array([5], np.uint64)))


def test_selection_keys_are_pinned():
    ids = np.array([0, 1, 2, -1, 2**62, 12345])
    assert [int(x) for x in sample_keys(ids, 0)] == [
        16294208416658607535, 15204172177749531820, 15319343049838170038,
        4007111439069458218, 3104510567450308759, 11606567437342005916]
    assert [int(x) for x in sample_keys(ids, 2**31 - 1)] == [
        12158150615018999093, 4908392231054595503, 14191633099092704225,
        12157464826261253750, 13219872752806683771, 15343572457935406061]
    assert uniform_keys(np.array([0, 5, 99]), 3).tolist() == [
        0.47384628863934786, 0.056992657598616714, 0.2976863906560525]


def test_sasrec_negatives_are_pinned():
    labels = np.array([[3, 4, 0], [7, 7, 1]])
    assert hashed_negatives(5, np.array([10, 11]), labels, 20, round_=2).tolist() == [[10, 8, 0], [20, 19, 4]]
    assert hashed_negatives(0, np.array([0, 2**40]), np.array([[1, 2, 3, 4]] * 2), 17).tolist() == [
        [2, 17, 13, 16], [17, 6, 7, 1]]
