"""Framing augmentation: tighter frames made before preprocessing, one per film per epoch."""

import numpy as np
import pytest
from conftest import require_service
from mlcore_support import DATASET, sample_files
from PIL import Image

from mlcore import data as datasets
from mlcore.framing import RandomFraming, zoom
from mlcore.preprocess import Preprocessing
from mlcore.train import TrainConfig, load_training_data
from mlcore.views import RandomViewBatches


def numbered_film(width: int = 100, height: int = 80) -> Image.Image:
    """Each pixel holds its own column (mod 256), so a crop shows where it was taken."""
    columns = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
    return Image.fromarray(columns)


def test_zoom_crops_a_tighter_frame_where_the_shift_puts_it():
    film = numbered_film()
    centred = zoom(film, 1.25)
    assert centred.size == (80, 64)
    assert np.asarray(centred)[0, 0] == 10  # (100 - 80) / 2 columns cut on the left
    assert np.asarray(zoom(film, 1.25, (-1, -1)))[0, 0] == 0  # the left edge
    assert np.asarray(zoom(film, 1.25, (1, 1)))[0, -1] == 99  # the right edge
    odd = numbered_film(101, 80)  # 21 spare columns: the edges are still reached
    assert np.asarray(zoom(odd, 101 / 80, (1, 0)))[0, -1] == 100
    assert np.asarray(zoom(odd, 101 / 80, (-1, 0)))[0, 0] == 0


def test_zoom_below_one_adds_a_black_margin():
    framed = zoom(Image.new("L", (100, 80), 200), 0.8)
    assert framed.size == (125, 100)
    pixels = np.asarray(framed)
    assert pixels[0, 0] == 0 and pixels[50, 62] == 200


def test_random_framing_is_tighter_repeatable_and_differs_between_views():
    film = numbered_film(400, 300)
    first = RandomFraming(1.3, view=1)(film, "person1_virus_1.jpeg")
    again = RandomFraming(1.3, view=1)(film, "person1_virus_1.jpeg")
    other = RandomFraming(1.3, view=2)(film, "person1_virus_1.jpeg")
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert (first.size, np.asarray(first)[0, 0]) != (other.size, np.asarray(other)[0, 0])
    sizes = [RandomFraming(1.3, view)(film, "IM-0001-0001.jpeg").size for view in range(40)]
    widths = [width for width, _ in sizes]
    assert 400 / 1.3 - 1 <= min(widths) < max(widths) <= 400
    assert len(set(widths)) > 20


def test_random_framing_refuses_a_zoom_that_is_not_tighter():
    with pytest.raises(ValueError, match="above 1"):
        RandomFraming(1.0, view=1)


def test_framed_arrays_are_preprocessed_after_framing_and_cached_apart(tmp_path):
    samples = [datasets.Sample(path, 0) for path in sample_files()[:4]]
    preprocessing = Preprocessing(size=64, crop_to_body=True)
    framing = RandomFraming(1.3, view=1)
    plain, _ = datasets.load_arrays(samples, preprocessing, tmp_path)
    framed, _ = datasets.load_arrays(samples, preprocessing, tmp_path, framing=framing)
    # Framed at the dataset's scale, as the dataset's films were made, then preprocessed.
    films = [preprocessing.source_film(s.path.read_bytes()) for s in samples]
    assert all(min(film.size) == 256 for film in films)  # the samples are full-size
    expected = [
        preprocessing(framing(film, s.path.name)) for film, s in zip(films, samples, strict=True)
    ]
    assert np.array_equal(framed, np.stack(expected))
    assert not np.array_equal(plain, framed)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    cached, _ = datasets.load_arrays(samples, preprocessing, tmp_path, framing=framing)
    assert np.array_equal(cached, framed)


def identifiable_views(count: int, films: int) -> list[np.ndarray]:
    """Views whose pixel (0, 0) is the film's number and pixel (0, 1) the view's."""
    views = np.zeros((count, films, 8, 8, 1), np.uint8)
    views[:, :, 0, 0, 0] = np.arange(films)
    views[:, :, 0, 1, 0] = np.arange(count)[:, None]
    return list(views)


def test_view_batches_show_every_film_once_per_epoch_in_a_random_view():
    films = 10
    labels = np.arange(films, dtype=np.float32) % 2
    weights = np.arange(films, dtype=np.float32) + 1
    batches = RandomViewBatches(identifiable_views(4, films), labels, weights, 4, seed=0)
    assert len(batches) == 3
    views_seen, views_by_epoch = set(), []
    for _ in range(3):
        shown, views_of_film = [], np.zeros(films, int)
        for index in range(len(batches)):
            images, batch_labels, batch_weights = batches[index]
            assert images.dtype == np.float32
            numbers = images[:, 0, 0, 0].astype(int)
            assert np.array_equal(batch_labels, labels[numbers])
            assert np.array_equal(batch_weights, weights[numbers])
            shown += numbers.tolist()
            views_of_film[numbers] = images[:, 0, 1, 0].astype(int)
            views_seen.update(views_of_film[numbers].tolist())
        assert sorted(shown) == list(range(films))
        views_by_epoch.append(views_of_film)
        batches.on_epoch_end()
    assert views_seen == {0, 1, 2, 3}
    assert not np.array_equal(views_by_epoch[0], views_by_epoch[1])  # drawn anew each epoch


def test_view_batches_refuse_views_of_other_films():
    with pytest.raises(ValueError, match="N = 3 films"):
        RandomViewBatches(identifiable_views(2, 4), np.zeros(3), np.ones(3), 2, seed=0)


def test_training_data_carries_one_reframed_copy_of_the_films_per_view(tmp_path):
    require_service("dataset", DATASET.is_dir(), f"{DATASET} (Kermany et al. 2018) is absent")
    config = TrainConfig(
        data=DATASET,
        out=tmp_path / "m",
        image_size=64,
        crop_to_body=True,
        limit_per_class=6,
        framing_views=2,
        cache_dir=tmp_path / "cache",
    )
    data = load_training_data(config)
    assert len(data.x_train_reframed) == 2
    for view in data.x_train_reframed:
        assert view.shape == data.x_train.shape
        assert not np.array_equal(view, data.x_train)
    assert not np.array_equal(*data.x_train_reframed)
