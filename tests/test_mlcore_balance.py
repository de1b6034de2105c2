"""Film-shape balancing weights: both classes end up with one aspect distribution."""

import keras
import numpy as np
from PIL import Image, ImageDraw

from mlcore.balance import film_aspect, film_shape_weights, shape_balancing_weights
from mlcore.data import Sample
from mlcore.metrics import rank_correlation
from mlcore.shape_estimator import ShapeEstimator


def _bin_shares(aspects, labels, weights, label, edges):
    chosen = labels == label
    bins = np.digitize(aspects[chosen], edges)
    return (
        np.bincount(bins, weights=weights[chosen], minlength=len(edges) + 1) / weights[chosen].sum()
    )


def test_weights_give_both_classes_the_same_aspect_distribution():
    rng = np.random.default_rng(0)
    normal = rng.normal(1.25, 0.1, 400)
    sick = rng.normal(1.4, 0.12, 900)
    aspects = np.concatenate([normal, sick])
    labels = np.array([0] * 400 + [1] * 900)
    weights = shape_balancing_weights(list(aspects), labels, bins=5, max_weight=100)
    edges = np.quantile(aspects, [0.2, 0.4, 0.6, 0.8])
    before = np.abs(
        _bin_shares(aspects, labels, np.ones(1300), 0, edges)
        - _bin_shares(aspects, labels, np.ones(1300), 1, edges)
    ).sum()
    after = np.abs(
        _bin_shares(aspects, labels, weights, 0, edges)
        - _bin_shares(aspects, labels, weights, 1, edges)
    ).sum()
    assert before > 0.5 and after < 1e-9
    for label in (0, 1):
        assert np.isclose(weights[labels == label].mean(), 1.0)


def test_unknown_aspects_keep_weight_one_and_rare_bins_are_capped():
    rng = np.random.default_rng(1)
    # Normal films are narrow, with a few wide ones: the wide bins want a large weight.
    normal = [*rng.normal(1.2, 0.03, 190), *rng.normal(1.6, 0.03, 10)]
    aspects = [*normal, *rng.normal(1.6, 0.05, 200), None, None]
    labels = np.array([0] * 200 + [1] * 200 + [0, 1])
    capped = shape_balancing_weights(aspects, labels, bins=5, max_weight=3.0)
    free = shape_balancing_weights(aspects, labels, bins=5, max_weight=1e9)
    assert capped[-2:].tolist() == [1.0, 1.0]
    spread = capped[:200].max() / capped[:200].min()
    assert spread <= 3.0 / 0.5 + 1e-9  # ratios lie in [1/2, cap] before the rescale
    assert free[:200].max() / free[:200].min() > 3.0 / 0.5


def test_too_few_known_films_leave_every_weight_at_one():
    weights = shape_balancing_weights([1.2, None, 1.5], np.array([0, 1, 1]))
    assert weights.tolist() == [1.0, 1.0, 1.0]


def test_film_aspect_reads_the_stored_size_and_skips_stretched_copies(tmp_path):
    Image.new("L", (300, 200)).save(tmp_path / "wide.jpeg")
    Image.new("L", (224, 224)).save(tmp_path / "stretched.jpeg")
    assert film_aspect(tmp_path / "wide.jpeg") == 1.5
    assert film_aspect(tmp_path / "stretched.jpeg") is None


def _disc_film(path, width: int, height: int) -> None:
    """A round 'chest' on a film of the given shape: stretched to a square, it turns oval."""
    image = Image.new("L", (width, height), 20)
    radius = min(width, height) * 0.4
    box = (width / 2 - radius, height / 2 - radius, width / 2 + radius, height / 2 + radius)
    ImageDraw.Draw(image).ellipse(box, fill=200)
    image.save(path)


def test_shape_estimator_reads_the_aspect_back_from_stretched_films(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    aspects = rng.uniform(1.0, 1.8, 100)
    samples = []
    for index, aspect in enumerate(aspects):
        path = tmp_path / f"film{index}.png"
        _disc_film(path, round(200 * aspect), 200)
        samples.append(Sample(path, index % 2))
    estimator = ShapeEstimator.fit(samples[:70], aspects[:70], epochs=20, seed=0)
    guesses = estimator.estimate(samples[70:])
    assert rank_correlation(guesses, aspects[70:]) > 0.8


def test_film_shape_weights_follow_the_order_of_the_films(tmp_path):
    narrow, wide, stretched = (240, 200), (300, 200), (224, 224)
    films = [(narrow, 0), (stretched, 0), (wide, 1), (narrow, 0), (wide, 1), (stretched, 1)] * 4
    films += [(wide, 0), (narrow, 1)]
    samples = []
    for index, (size, label) in enumerate(films):
        path = tmp_path / f"film{index}.jpeg"
        Image.new("L", size).save(path)
        samples.append(Sample(path, label))
    weights, summary = film_shape_weights(samples, [], estimate=False)
    shapes = {narrow: 1.2, wide: 1.5, stretched: None}
    expected = shape_balancing_weights(
        [shapes[size] for size, _ in films], np.array([label for _, label in films])
    )
    assert summary == {"films_of_known_shape": 18}
    assert np.allclose(weights, expected) and not np.allclose(weights, 1.0)
    assert all(w == 1.0 for w, (size, _) in zip(weights, films, strict=True) if size == stretched)
