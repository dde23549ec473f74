"""The `paper-real` preset: Keras's data sets and their messy twins.

Offline: the loaders read small fake files in the layout Keras reads
(`tests/test_study_datasets.py`), and one real run trains on them.
"""

import keras
import numpy as np

from keras_dreg.study import datasets
from keras_dreg.study import load_dataset
from keras_dreg.study import preset
from keras_dreg.study import regimes
from keras_dreg.study import runner
from keras_dreg.study.config import RunConfig
from tests.test_study_datasets import _fake_get_file
from tests.test_study_datasets import _ragged


def test_paper_real_preset_is_the_paper_design_on_real_data():
    real, paper = preset("paper-real"), preset("paper")
    assert real.datasets == datasets.REAL_DATASETS
    assert set(real.datasets) <= set(datasets.available_datasets())
    assert {d.removesuffix("_messy") for d in real.datasets} == {
        "cifar10",
        "fashion_mnist",
        "imdb",
        "reuters",
    }
    assert real.num_runs == paper.num_runs == 2880
    for field in ("activations", "regularizers", "train_fractions", "seeds"):
        assert getattr(real, field) == getattr(paper, field)


def _fake_imdb(monkeypatch, folder, n=40):
    rng = np.random.default_rng(0)
    np.savez(
        folder / "imdb.npz",
        x_train=_ragged(rng.integers(1, 500, (n, 12)).tolist()),
        y_train=np.arange(n) % 2,
        x_test=_ragged(rng.integers(1, 500, (10, 12)).tolist()),
        y_test=np.arange(10) % 2,
    )
    _fake_get_file(monkeypatch, "imdb", folder)


def test_messy_twin_of_an_online_set(monkeypatch, tmp_path):
    _fake_imdb(monkeypatch, tmp_path)
    clean = load_dataset("imdb")
    messy = load_dataset("imdb_messy", seed=0)
    assert messy.messy and not clean.messy and messy.name == "imdb_messy"
    np.testing.assert_array_equal(messy.x_test, clean.x_test)
    np.testing.assert_array_equal(messy.y_test, clean.y_test)
    flipped = np.sum(messy.y_train != clean.y_train)
    assert flipped == round(regimes.LABEL_NOISE * len(clean.y_train))
    assert np.any(messy.x_train != clean.x_train)
    assert (messy.x_train[clean.x_train == 0] == 0).all()  # padding kept
    again = load_dataset("imdb_messy", seed=1)
    assert np.any(again.y_train != messy.y_train)  # seeded corruption


def test_messy_images_keep_the_clean_standardization(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        y_train=np.arange(30) % 10,
        x_test=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        y_test=np.arange(5),
    )
    _fake_get_file(monkeypatch, "mnist", tmp_path)
    clean, messy = load_dataset("mnist"), load_dataset("mnist_messy", seed=2)
    np.testing.assert_array_equal(messy.x_test, clean.x_test)
    changed = np.any(messy.x_train != clean.x_train, axis=(1, 2, 3))
    assert changed.sum() == round(regimes.INPUT_NOISE * 30)


def test_a_real_run_on_a_messy_online_set(monkeypatch, tmp_path):
    _fake_imdb(monkeypatch, tmp_path)
    runner._load.cache_clear()
    config = RunConfig(
        "gelu",
        "dreg",
        "imdb_messy",
        1.0,
        0,
        1,
        16,
        1e-3,
        keras.backend.backend(),
    )
    try:
        result = runner.train_run(config)
    finally:
        runner._load.cache_clear()
    assert result.messy and result.task == "text"
    assert 0.0 <= result.accuracy <= 1.0 and result.penalty > 0
