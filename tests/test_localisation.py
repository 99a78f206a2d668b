"""Localisation scores against hand-computed cases: pointing game, energy, centre prior, boxes as masks."""
import math

import numpy as np
import pytest

from retrieval.localisation import (box_coverage, box_mask, centre_prior, energy_inside, pointing_game, summarise,
                                    tolerance)


def _mask(h, w, rows, cols):
    m = np.zeros((h, w), dtype=bool)
    m[rows, cols] = True
    return m


def test_tolerance_is_15_px_at_224_scaled():
    assert tolerance(224, 224) == 15 and tolerance(112, 300) == 7.5 and tolerance(64, 64) == pytest.approx(60 / 14)


def test_pointing_game_hit_miss_and_tolerance():
    mask = _mask(10, 10, slice(2, 4), slice(2, 4))  # object: rows 2-3, cols 2-3
    on = np.zeros((10, 10)); on[3, 3] = 1  # peak on the object
    near = np.zeros((10, 10)); near[3, 6] = 1  # 3 px right of the nearest object pixel (3, 3)
    far = np.zeros((10, 10)); far[9, 9] = 1  # √(6² + 6²) ≈ 8.5 px away
    hits = pointing_game(np.stack([on, near, far]), np.stack([mask] * 3), tol=0)
    np.testing.assert_array_equal(hits, [1, 0, 0])
    np.testing.assert_array_equal(pointing_game(np.stack([near, far]), np.stack([mask] * 2), tol=3), [1, 0])
    np.testing.assert_array_equal(pointing_game(np.stack([near, far]), np.stack([mask] * 2), tol=8.5), [1, 1])


def test_pointing_game_ties_score_the_share_of_maxima_that_hit():
    mask = _mask(4, 4, slice(0, 1), slice(None))  # the top row: 4 of 16 pixels
    assert pointing_game(np.ones((4, 4)), mask, tol=0)[0] == pytest.approx(4 / 16)
    two = np.zeros((4, 4)); two[0, 0] = two[3, 3] = 5  # one maximum on the object, one off
    assert pointing_game(two, mask, tol=0)[0] == 0.5


def test_empty_mask_is_not_counted():
    maps = np.random.default_rng(0).random((2, 5, 5))
    masks = np.stack([np.zeros((5, 5), bool), np.ones((5, 5), bool)])
    hits, energy = pointing_game(maps, masks), energy_inside(maps, masks)
    assert math.isnan(hits[0]) and hits[1] == 1 and math.isnan(energy[0]) and energy[1] == pytest.approx(1)
    assert summarise(hits, energy) == {"pointing_game": 1.0, "energy": pytest.approx(1.0), "images": 1}


def test_energy_inside_counts_positive_mass_only():
    m = np.array([[4.0, 1.0], [-3.0, 0.0]])  # positive mass 5
    mask = np.array([[True, False], [True, True]])  # holds 4 of it (the -3 does not count)
    assert energy_inside(m, mask)[0] == pytest.approx(4 / 5)
    assert math.isnan(energy_inside(-np.ones((2, 2)), mask)[0])  # nothing positive: undefined


def test_centre_prior_peaks_at_the_centre_and_hits_a_central_object():
    prior = centre_prior(9, 9)
    assert prior.argmax() == 4 * 9 + 4 and prior.max() == pytest.approx(1) and prior[0, 0] < 0.05
    np.testing.assert_allclose(prior, prior.T)
    assert pointing_game(prior, _mask(9, 9, slice(3, 6), slice(3, 6)), tol=0)[0] == 1
    assert pointing_game(prior, _mask(9, 9, slice(0, 2), slice(0, 2)), tol=0)[0] == 0
    # energy of the prior on the left half of an even-sized image: exactly half by symmetry
    assert energy_inside(centre_prior(8, 8), _mask(8, 8, slice(None), slice(0, 4)))[0] == pytest.approx(0.5)


def test_box_mask_pixel_centres_and_scaling():
    m = box_mask(np.array([1, 2, 4, 3]), 5, 6)  # x 1..4 (exclusive), y 2..3 (exclusive)
    np.testing.assert_array_equal(np.argwhere(m), [[2, 1], [2, 2], [2, 3]])
    # the same box on an image shown at half its size in x, twice in y
    scaled = box_mask(np.array([2, 1, 8, 1.5]), 5, 6, scale_x=0.5, scale_y=2.0)
    np.testing.assert_array_equal(scaled, m)
    assert not box_mask(np.array([np.nan] * 4), 3, 3).any()


def test_box_coverage():
    boxes = np.array([[0, 0, 100, 50], [0, 0, 10, 10], [np.nan] * 4])
    sizes = np.array([[100, 50], [20, 10], [7, 7]])
    assert box_coverage(boxes, sizes) == pytest.approx((1.0 + 0.5) / 2)
    assert math.isnan(box_coverage(np.full((1, 4), np.nan), np.ones((1, 2))))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        pointing_game(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))
