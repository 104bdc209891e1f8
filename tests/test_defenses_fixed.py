"""Defenses are functions of one answer: parameters fixed once, randomness per image and view.

The property that matters for an audit: the same image, served in two different files (another
batch, other neighbours, another order), gets the same defended answer, and nothing about a
defense depends on the file being answered, only on the reference it was fitted on.
"""

from __future__ import annotations

import numpy as np
import pytest

from lpla.defenses import (
    DefenseNotFittedError,
    NoiseDefense,
    QuantizeDefense,
    create_defense,
    list_defenses,
)
from lpla.errors import LplaError

N_IMAGES, K, D = 40, 3, 8


@pytest.fixture(scope="module")
def answers() -> np.ndarray:
    """The encoder's answers to images 0..39: one fixed array, indexed by image."""
    rng = np.random.default_rng(0)
    scale = rng.lognormal(0.0, 0.5, size=(N_IMAGES, 1, 1))
    return (rng.normal(size=(N_IMAGES, K, D)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(100, K, D)).astype(np.float32)


@pytest.mark.parametrize("spec", ["noise:0.3", "quantize:3", "l2-normalize", "none"])
def test_the_same_image_gets_the_same_answer_in_two_files(answers, reference, spec) -> None:
    defense = create_defense(spec, seed=7).fit(reference)
    # file A: images 0..29 in order; file B: images 20..39, shuffled, with other neighbours
    file_a = np.arange(30)
    file_b = np.random.default_rng(2).permutation(np.arange(20, 40))
    out_a = defense.apply(answers[file_a], file_a)
    out_b = defense.apply(answers[file_b], file_b)
    shared = np.arange(20, 30)
    pos_b = {int(image): row for row, image in enumerate(file_b)}
    for image in shared:
        np.testing.assert_array_equal(out_a[image], out_b[pos_b[int(image)]])
    # one image alone, and the same defense fitted again on the same reference: same answers
    again = create_defense(spec, seed=7).fit(reference)
    np.testing.assert_array_equal(again.apply(answers[[25]], np.array([25])), out_a[[25]])


def test_noise_is_a_function_of_seed_image_and_view(answers, reference) -> None:
    defense = create_defense("noise:0.3", seed=7).fit(reference)
    noise = defense.apply(answers, np.arange(N_IMAGES)) - answers
    # the same answer under another image index gets other noise; another seed, other noise
    relabelled = defense.apply(answers, np.arange(N_IMAGES) + 1000) - answers
    assert not np.allclose(noise, relabelled)
    other_seed = create_defense("noise:0.3", seed=8).fit(reference)
    assert not np.allclose(other_seed.apply(answers, np.arange(N_IMAGES)) - answers, noise)
    # view k keeps its noise when fewer views are served (K=2 is a prefix of K=3)
    fewer = defense.apply(answers[:, :2], np.arange(N_IMAGES)) - answers[:, :2]
    np.testing.assert_allclose(fewer, noise[:, :2], atol=1e-6)
    # views of one image get different noise
    assert not np.allclose(noise[:, 0], noise[:, 1])


def test_parameters_come_from_the_reference_only(answers, reference) -> None:
    noise = create_defense("noise:0.3").fit(reference)
    assert isinstance(noise, NoiseDefense)
    expected = 0.3 * np.linalg.norm(reference, axis=-1).mean() / np.sqrt(D)
    assert noise.sigma_ == pytest.approx(expected, rel=1e-6)
    quantize = create_defense("quantize:3").fit(reference)
    assert isinstance(quantize, QuantizeDefense)
    assert (quantize.lo_, quantize.hi_) == (float(reference.min()), float(reference.max()))
    before = (noise.sigma_, quantize.lo_, quantize.hi_)
    # answering a batch of 100x larger answers changes neither the noise level nor the grid
    big = answers * 100
    served = quantize.apply(big, np.arange(N_IMAGES))
    noise.apply(big, np.arange(N_IMAGES))
    assert (noise.sigma_, quantize.lo_, quantize.hi_) == before
    # values outside the fitted range are clipped to its ends
    assert served.min() == pytest.approx(quantize.lo_) and served.max() == pytest.approx(
        quantize.hi_
    )
    grid = quantize.lo_ + np.arange(8) / 7 * (quantize.hi_ - quantize.lo_)
    assert np.abs(served[..., None] - grid).min(axis=-1).max() < 1e-5


@pytest.mark.parametrize("name", list_defenses(kind="output"))
def test_apply_needs_a_fit(answers, name) -> None:
    defense = create_defense(name)
    with pytest.raises(DefenseNotFittedError, match=r"not fitted; call \.fit\(reference"):
        defense.apply(answers, np.arange(N_IMAGES))


def test_bad_inputs_are_one_line_user_errors(answers, reference) -> None:
    defense = create_defense("noise").fit(reference)
    cases = [
        (lambda: defense.apply(answers[:, :, :4], np.arange(N_IMAGES)), "fitted on 8-d"),
        (lambda: defense.apply(answers, np.arange(3)), "one integer image index per row"),
        (lambda: defense.apply(answers, np.arange(N_IMAGES) * 1.0), "one integer image index"),
        (lambda: defense.apply(answers[0], np.arange(K)), r"must be \[N, K, D\]"),
        (lambda: create_defense("noise").fit(reference[:0]), "reference embeddings are empty"),
        (lambda: create_defense("quantize").fit(np.ones((2, 1, 3))), "no range to quantize"),
    ]
    for call, message in cases:
        with pytest.raises(LplaError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
