"""The study's data sets and regimes: offline, online (fake files), yours."""

import gzip
import importlib
import os
import pickle
import random

import numpy as np
import pytest

from keras_dreg.study import datasets
from keras_dreg.study import regimes
from keras_dreg.study.datasets import Dataset
from keras_dreg.study.datasets import load_dataset
from keras_dreg.study.datasets import register_dataset

SHAPES = {
    "digits": ("image", (1348, 8, 8, 1), (449, 8, 8, 1), 10),
    "mnist1d": ("sequence", (3750, 40, 1), (1250, 40, 1), 10),
    "text_rule": ("text", (3000, 32), (1000, 32), 4),
    "breast_cancer": ("tabular", (427, 30), (142, 30), 2),
}
BASES = list(SHAPES)


def _within(observed, expected, n, sigmas=4.0):
    """Whether a rate over `n` Bernoulli trials is near `expected`."""
    return abs(observed - expected) <= sigmas * np.sqrt(
        expected * (1 - expected) / n
    )


def _arrays(data):
    return (data.x_train, data.y_train, data.x_test, data.y_test)


@pytest.fixture
def registry(monkeypatch):
    """Keeps registrations made by a test out of the other tests."""
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))


def test_names():
    assert len(datasets.OFFLINE_DATASETS) == 8
    assert datasets.available_datasets() == list(
        datasets.OFFLINE_DATASETS
        + datasets.ONLINE_DATASETS
        + tuple(f"{n}_messy" for n in datasets.ONLINE_DATASETS)
    )
    with pytest.raises(ValueError, match="digits_messy, mnist1d"):
        load_dataset("nope")


@pytest.mark.parametrize("name", datasets.OFFLINE_DATASETS)
def test_offline_shapes_dtypes_and_labels(name):
    base = name.removesuffix("_messy")
    task, train_shape, test_shape, num_classes = SHAPES[base]
    data = load_dataset(name, seed=0)
    assert (data.name, data.task, data.messy) == (name, task, name != base)
    assert data.x_train.shape == train_shape
    assert data.x_test.shape == test_shape
    assert data.num_classes == num_classes
    x_dtype = np.int32 if task == "text" else np.float32
    assert data.x_train.dtype == data.x_test.dtype == x_dtype
    for y in (data.y_train, data.y_test):
        assert y.dtype == np.int32
        assert set(np.unique(y)) == set(range(num_classes))
    assert data.description
    if task == "text":
        assert data.vocab_size == datasets.TEXT_VOCAB_SIZE
        assert data.x_train.max() < data.vocab_size
    else:
        assert data.vocab_size is None


@pytest.mark.parametrize("name", datasets.OFFLINE_DATASETS)
def test_offline_is_deterministic_per_seed(name):
    first, again = load_dataset(name, 1), load_dataset(name, 1)
    for a, b in zip(_arrays(first), _arrays(again)):
        np.testing.assert_array_equal(a, b)
    other = load_dataset(name, 2)
    assert not np.array_equal(first.x_test, other.x_test)


@pytest.mark.parametrize("base", BASES)
def test_split_is_stratified_and_standardized(base):
    data = load_dataset(base, seed=3)
    counts = np.bincount(data.y_test) + np.bincount(data.y_train)
    expected = counts * datasets.TEST_FRACTION
    assert np.all(np.abs(np.bincount(data.y_test) - expected) <= 1)
    if data.task == "text":
        return
    axis = 0 if data.task == "tabular" else None
    np.testing.assert_allclose(data.x_train.mean(axis=axis), 0, atol=1e-4)
    std = data.x_train.std(axis=axis)
    np.testing.assert_allclose(std[std > 0], 1, atol=1e-4)


@pytest.mark.parametrize("base", BASES)
def test_messy_twin_corrupts_only_its_training_set(base):
    clean, messy = load_dataset(base, 4), load_dataset(f"{base}_messy", 4)
    np.testing.assert_array_equal(clean.x_test, messy.x_test)
    np.testing.assert_array_equal(clean.y_test, messy.y_test)
    n = len(clean.y_train)
    flipped = clean.y_train != messy.y_train
    assert flipped.sum() == round(regimes.LABEL_NOISE * n)
    assert _within(flipped.mean(), regimes.LABEL_NOISE, n)
    rows = (clean.x_train != messy.x_train).reshape(n, -1)
    changed = rows.any(axis=1)
    if clean.task == "text":
        _check_messy_tokens(clean.x_train, messy.x_train, rows, changed)
    else:
        assert changed.sum() == round(regimes.INPUT_NOISE * n)
        noise = (messy.x_train - clean.x_train)[changed]
        assert abs(noise.std() - regimes.NOISE_STD) < 0.05


def _check_messy_tokens(clean, messy, hits, changed):
    chosen = round(regimes.INPUT_NOISE * len(clean))
    # A chosen sequence keeps all its tokens with probability <= 0.8**16.
    assert 0.97 * chosen <= changed.sum() <= chosen
    tokens = (clean != 0)[changed]
    rate = hits[changed].sum() / tokens.sum()
    assert _within(rate, regimes.TOKEN_REPLACE_RATE, tokens.sum())
    np.testing.assert_array_equal(clean == 0, messy == 0)


def test_messy_differs_between_seeds():
    first = load_dataset("breast_cancer_messy", 0)
    second = load_dataset("breast_cancer_messy", 1)
    assert not np.array_equal(first.x_train, second.x_train)


def test_mnist1d_leaves_global_random_state_alone():
    np.random.seed(7)
    random.seed(7)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    datasets._mnist1d_pool()
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert random.getstate() == python_state


def test_text_rule_label_follows_the_keyword_and_negation_rule():
    data = load_dataset("text_rule")
    x = data.x_train
    group = (x - 1) // datasets.TEXT_KEYWORDS_PER_CLASS
    keyword = (x >= 1) & (x < datasets.TEXT_NEGATION)
    counts = np.stack(
        [(keyword & (group == c)).sum(axis=1) for c in range(4)], axis=1
    )
    top = np.sort(counts, axis=1)
    assert np.all(top[:, -1] > top[:, -2])
    negated = (x == datasets.TEXT_NEGATION).any(axis=1)
    assert 0.45 < negated.mean() < 0.55
    expected = (counts.argmax(axis=1) + negated) % 4
    np.testing.assert_array_equal(expected, data.y_train)
    lengths = (x != 0).sum(axis=1)
    assert lengths.min() >= datasets.TEXT_MIN_LENGTH
    assert lengths.max() <= datasets.TEXT_MAXLEN
    assert np.all(x[:, -1][lengths < datasets.TEXT_MAXLEN] == 0)


# Regimes.


@pytest.mark.parametrize("fraction", regimes.TRAIN_FRACTIONS)
def test_subsample_is_stratified_sized_and_nested(fraction):
    data = load_dataset("digits", seed=0)
    small = regimes.subsample(data, fraction, seed=5)
    n = len(data.y_train)
    assert len(small.y_train) == round(fraction * n)
    share = np.bincount(small.y_train) - fraction * np.bincount(data.y_train)
    assert np.all(np.abs(share) <= 1)
    assert small.x_test is data.x_test
    assert small.name == data.name
    smaller = regimes.subsample(data, fraction / 2, seed=5)
    rows = {row.tobytes() for row in small.x_train}
    assert all(row.tobytes() in rows for row in smaller.x_train)
    again = regimes.subsample(data, fraction, seed=5)
    np.testing.assert_array_equal(small.x_train, again.x_train)


def test_subsample_keeps_every_class_and_rejects_bad_fractions():
    data = load_dataset("breast_cancer")
    tiny = regimes.subsample(data, 0.001, seed=0)
    assert sorted(tiny.y_train) == [0, 1]
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            regimes.subsample(data, fraction, seed=0)


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_corrupt_test_inputs_adds_noise_at_the_documented_level(name):
    data = load_dataset(name)
    noisy = regimes.corrupt_test_inputs(data, seed=0)
    assert noisy.shape == data.x_test.shape and noisy.dtype == np.float32
    noise = noisy - data.x_test
    axis = 0 if data.task == "tabular" else None
    expected = regimes.NOISE_STD * data.x_train.std(axis=axis)
    np.testing.assert_allclose(noise.std(axis=axis), expected, rtol=0.3)
    assert abs(noise.std() - regimes.NOISE_STD) < 0.02
    np.testing.assert_array_equal(
        noisy, regimes.corrupt_test_inputs(data, seed=0)
    )


def test_corrupt_test_inputs_replaces_tokens_never_padding():
    data = load_dataset("text_rule")
    noisy = regimes.corrupt_test_inputs(data, seed=0)
    assert noisy.dtype == np.int32
    np.testing.assert_array_equal(noisy == 0, data.x_test == 0)
    tokens = (data.x_test != 0).sum()
    rate = (noisy != data.x_test).sum() / tokens
    assert _within(rate, regimes.TOKEN_REPLACE_RATE, tokens)
    assert noisy.max() < data.vocab_size


def test_make_messy_exact_counts_and_no_mutation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=1000).astype(np.int32)
    x_before, y_before = x.copy(), y.copy()
    x_new, y_new = regimes.make_messy(
        x, y, 3, label_noise=0.3, input_noise=0.1, seed=1
    )
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    assert (y_new != y).sum() == 300 and y_new.max() < 3
    assert (x_new != x).any(axis=1).sum() == 100
    assert x_new.dtype == x.dtype and y_new.dtype == y.dtype
    with pytest.raises(ValueError, match="label_noise"):
        regimes.make_messy(x, y, 3, label_noise=2.0, input_noise=0, seed=1)


def test_regime_names():
    assert regimes.REGIMES == ("clean", "messy", "noise", "scarcity")
    assert regimes.TRAIN_FRACTIONS[-1] == 1.0


# Online loaders, on small fake files in the layout Keras reads.


def _fake_get_file(monkeypatch, module, folder):
    module = importlib.import_module(f"keras.src.datasets.{module}")

    def get_file(fname=None, origin=None, **kwargs):
        return os.path.join(folder, "" if kwargs.get("extract") else fname)

    monkeypatch.setattr(module, "get_file", get_file)


def test_mnist_loader_parses_the_npz(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 3, 4, 9], np.uint8),
        "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "y_test": np.array([5, 6], np.uint8),
    }
    np.savez(tmp_path / "mnist.npz", **arrays)
    _fake_get_file(monkeypatch, "mnist", tmp_path)
    data = load_dataset("mnist")
    assert data.x_train.shape == (6, 28, 28, 1)
    assert data.x_train.dtype == np.float32
    assert abs(data.x_train.mean()) < 1e-5
    np.testing.assert_array_equal(data.y_test, [5, 6])
    assert (data.task, data.num_classes) == ("image", 10)


def test_fashion_mnist_loader_parses_idx_files(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 4), ("t10k", 3)):
        labels = np.arange(n, dtype=np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes(8) + labels.tobytes())
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes(16) + images.tobytes())
    _fake_get_file(monkeypatch, "fashion_mnist", tmp_path)
    data = load_dataset("fashion_mnist")
    assert data.x_train.shape == (4, 28, 28, 1)
    assert data.x_test.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(data.y_train, [0, 1, 2, 3])


def test_cifar10_loader_parses_pickled_batches(monkeypatch, tmp_path):
    # Keras fills 5 x 10000 training rows; one-row batches broadcast.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        rows = 3 if name == "test_batch" else 1
        batch = {
            b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
            b"labels": [i] * rows,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=3)
    _fake_get_file(monkeypatch, "cifar10", tmp_path)
    data = load_dataset("cifar10")
    assert data.x_train.shape == (50000, 32, 32, 3)
    assert data.x_test.shape == (3, 32, 32, 3)
    assert data.y_train.shape == (50000,)
    np.testing.assert_array_equal(data.y_test, [5, 5, 5])
    assert np.unique(data.y_train).tolist() == [0, 1, 2, 3, 4]


def _ragged(sequences):
    array = np.empty(len(sequences), dtype=object)
    array[:] = [list(s) for s in sequences]
    return array


def test_imdb_loader_pads_and_caps_the_vocabulary(monkeypatch, tmp_path):
    np.savez(
        tmp_path / "imdb.npz",
        x_train=_ragged([[5, 6, 7], [20000, 4], list(range(1, 300))]),
        y_train=np.array([0, 1, 1]),
        x_test=_ragged([[8], [9, 9]]),
        y_test=np.array([1, 0]),
    )
    _fake_get_file(monkeypatch, "imdb", tmp_path)
    data = load_dataset("imdb")
    assert data.x_train.shape == (3, datasets.ONLINE_MAXLEN)
    assert data.x_train.dtype == np.int32
    assert data.vocab_size == datasets.ONLINE_NUM_WORDS
    assert data.x_train.max() < data.vocab_size
    rows = {tuple(row[row != 0]) for row in data.x_train}
    assert (1, 8, 9, 10) in rows and (1, 2, 7) in rows
    assert sorted(data.y_test) == [0, 1]


def test_reuters_loader_splits_the_npz(monkeypatch, tmp_path):
    np.savez(
        tmp_path / "reuters.npz",
        x=_ragged([[i + 1, i + 2] for i in range(10)]),
        y=np.arange(10) * 4,
    )
    _fake_get_file(monkeypatch, "reuters", tmp_path)
    data = load_dataset("reuters")
    assert (len(data.y_train), len(data.y_test)) == (8, 2)
    assert data.num_classes == 46 and data.task == "text"
    assert data.x_test.shape == (2, datasets.ONLINE_MAXLEN)


# Your own data sets.


def _tabular(n=20, classes=3):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(n, 4)),
        "y_train": np.arange(n) % classes,
        "x_test": rng.normal(size=(6, 4)),
        "y_test": np.arange(6) % classes,
    }


def test_register_arrays(registry):
    arrays = _tabular()
    arrays["y_train"] = arrays["y_train"].reshape(-1, 1)
    register_dataset("mine", task="tabular", description="d", **arrays)
    data = load_dataset("mine", seed=9)
    assert "mine" in datasets.available_datasets()
    assert data.num_classes == 3 and data.y_train.shape == (20,)
    assert data.x_train.dtype == np.float32
    np.testing.assert_allclose(data.x_test, arrays["x_test"], rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("mine", task="tabular", **arrays)


def test_register_loader(registry):
    def loader(seed):
        return Dataset(
            "seeded", "tabular", num_classes=3, **_tabular(20 + seed)
        )

    register_dataset("seeded", loader)
    assert len(load_dataset("seeded", seed=4).y_train) == 24
    register_dataset("broken", lambda seed: "not a data set")
    with pytest.raises(TypeError, match="broken"):
        load_dataset("broken")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y_train": np.arange(19) % 3}, "y_train must have shape"),
        ({"y_test": np.array([0, 1, 2, 3, 0, 7]), "num_classes": 3}, "outside"),
        ({"y_test": np.full(6, -1)}, "outside"),
        ({"task": "audio"}, "unknown task"),
        ({"task": "image"}, "ndim"),
        ({"x_test": np.zeros((6, 5))}, "shapes differ"),
        ({"y_train": np.full(20, 0.5)}, "integers"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_register_rejects_bad_arrays(registry, change, message):
    arguments = {"task": "tabular", **_tabular(), **change}
    with pytest.raises(ValueError, match=message):
        register_dataset("bad", **arguments)
    assert "bad" not in datasets.available_datasets()


def test_register_checks_text(registry):
    tokens = np.array([[3, 4, 0], [5, 0, 0]])
    text = {"x_train": tokens, "y_train": [0, 1], "x_test": tokens}
    text["y_test"] = [1, 0]
    with pytest.raises(ValueError, match="vocab_size"):
        register_dataset("t", task="text", **text)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        register_dataset("t", task="text", vocab_size=5, **text)
    register_dataset("t", task="text", vocab_size=9, **text)
    assert load_dataset("t").x_train.dtype == np.int32


def test_register_needs_one_source(registry):
    with pytest.raises(ValueError, match="either"):
        register_dataset("x", lambda s: None, task="tabular")
    with pytest.raises(ValueError, match="Without a loader"):
        register_dataset("x", task="tabular")
