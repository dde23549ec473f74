"""The study's data sets: eight offline defaults, Keras's online sets, yours.

Every data set is a `Dataset`: integer labels in ``[0, num_classes)``,
float32 inputs (or int32 token ids for text), a fixed test set.

The eight offline defaults
--------------------------

They need no internet: scikit-learn's bundled data, MNIST-1D generated
locally, and a synthetic text task. They come as four clean data sets
and their four messy twins, one pair per kind of input, so that every
kind is seen both clean and messy and the clean/messy comparison is
paired on the same underlying data:

| name (and ``_messy`` twin) | task     | pool | train | test | classes |
|----------------------------|----------|------|-------|------|---------|
| ``digits``                 | image    | 1797 | 1348  | 449  | 10      |
| ``mnist1d``                | sequence | 5000 | 3750  | 1250 | 10      |
| ``text_rule``              | text     | 4000 | 3000  | 1000 | 4       |
| ``breast_cancer``          | tabular  | 569  | 427   | 142  | 2       |

- ``digits``: scikit-learn's ``load_digits``, 8x8 grey-level digits with
  values 0..16, as ``(N, 8, 8, 1)`` images (vision-like).
- ``mnist1d``: MNIST-1D (Greydanus, 2020), generated on the fly by
  ``mnist1d.data.make_dataset`` with the package's default arguments
  (``get_dataset_args()``: 5000 signals of length 40, generator seed 42),
  so it is the standard MNIST-1D data; nothing is downloaded or written to
  disk. ``make_dataset`` seeds NumPy's and Python's global generators; the
  loader restores both afterwards. Inputs are ``(N, 40, 1)`` signals.
- ``text_rule``: synthetic topic classification with a negation rule.
  Token ids lie in ``[0, 256)``, 0 is padding. Each of the 4 classes owns
  five keyword ids (1-20), id 21 is a negation token, ids 22-255 are
  distractors. A sequence has 12-32 tokens, post-padded to length 32.
  One keyword group is the sequence's topic: every other group gets 0-2
  of its keywords, the topic one more than the largest of those. Half of
  the sequences also hold one or two negation tokens. The label is the
  topic, or, when a negation token occurs, the next class
  (``(topic + 1) mod 4``), so the model must combine counting with an
  interaction that a bag-of-words linear model cannot express. The rest
  are distractors drawn uniformly; the tokens are shuffled (the rule
  ignores order). Classes are balanced. The pool is generated once with
  a fixed generator seed (1234). (A first version without negation was
  learned perfectly within 5 epochs by every model, so it could not
  separate regularizers on clean data; the negation rule was added once
  for that reason alone and not tuned further.)
- ``breast_cancer``: scikit-learn's Wisconsin breast-cancer data,
  30 numeric features, 2 classes (tabular). scikit-learn's ``wine``
  (178 examples, a 45-example test set) was left out as too small for a
  stable test accuracy.

Choices common to the offline sets:

- Split: a stratified train/test split with `TEST_FRACTION` (25 %) of
  each class in the test set, drawn with the run's ``seed``. The pool is
  fixed; the split depends on the seed, so the study's five seeds are
  five resamplings of the data as well as five initializations. A data
  set and its messy twin use the same split for the same seed.
- Standardization, with training-set statistics only: per feature for
  tabular data, one global mean and standard deviation for images and
  signals (per-pixel statistics would blow up the constant border of
  the digits). Text is not standardized.
- Messy twins (``<name>_messy``): the clean data set, then
  `keras_dreg.study.regimes.make_messy` on the (standardized) training
  set with ``LABEL_NOISE`` = 20 % of labels flipped uniformly to another
  class and ``INPUT_NOISE`` = 20 % of inputs corrupted (Gaussian noise
  of 0.5 feature standard deviations; 20 % token replacement for text).
  The corruption depends on the seed. The test set is the clean twin's,
  unchanged, and so are the standardization statistics.

The online sets
---------------

``mnist``, ``fashion_mnist``, ``cifar10``, ``imdb`` and ``reuters`` call
the real ``keras.datasets.<name>.load_data()``, which downloads into
Keras's cache (``~/.keras/datasets``, or ``$KERAS_HOME/datasets`` when
``KERAS_HOME`` is set before Keras is imported) and reads the file from
there afterwards. They keep their official train/test splits and ignore
``seed``. Images become channels-last float32, standardized with one
global training mean and standard deviation; IMDB and Reuters keep the
`ONLINE_NUM_WORDS` most frequent words (1 = start, 2 = out of
vocabulary) and are padded or truncated by ``keras.utils.pad_sequences``
to `ONLINE_MAXLEN` tokens.

Each has a messy twin (``cifar10_messy``, ...): the official training
set corrupted by `make_messy` as the offline twins are (20 % of labels
flipped, 20 % of inputs corrupted, seeded by the run's seed), the test
set unchanged. `REAL_DATASETS` (CIFAR-10, Fashion-MNIST, IMDB, Reuters
and their twins) is the grid of the `paper-real` preset: two vision and
two NLP sets, clean and messy.

Your own
--------

`register_dataset` adds a name for arrays or for a ``loader(seed)``.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import zlib
from typing import Callable

import numpy as np

from keras_dreg.study.regimes import INPUT_NOISE
from keras_dreg.study.regimes import LABEL_NOISE
from keras_dreg.study.regimes import feature_std
from keras_dreg.study.regimes import global_moments
from keras_dreg.study.regimes import make_messy
from keras_dreg.study.regimes import stratified_order

TASKS = ("tabular", "image", "sequence", "text")
OFFLINE_DATASETS = (
    "digits",
    "digits_messy",
    "mnist1d",
    "mnist1d_messy",
    "text_rule",
    "text_rule_messy",
    "breast_cancer",
    "breast_cancer_messy",
)
"""The eight default data sets, which need no download (see above)."""
ONLINE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "imdb", "reuters")
"""Keras's data sets, downloaded by `keras.datasets` on first use."""
REAL_DATASETS = tuple(
    name
    for base in ("cifar10", "fashion_mnist", "imdb", "reuters")
    for name in (base, f"{base}_messy")
)
"""The `paper-real` preset's data sets: four online sets and their twins."""
TEST_FRACTION = 0.25
ONLINE_NUM_WORDS = 10_000
ONLINE_MAXLEN = 200

TEXT_VOCAB_SIZE = 256
TEXT_NUM_CLASSES = 4
TEXT_KEYWORDS_PER_CLASS = 5
TEXT_NEGATION = 1 + TEXT_NUM_CLASSES * TEXT_KEYWORDS_PER_CLASS
TEXT_MIN_LENGTH = 12
TEXT_MAXLEN = 32
TEXT_POOL_SIZE = 4000
TEXT_POOL_SEED = 1234

_SPLIT = 21
_NDIM = {"tabular": (2,), "image": (4,), "sequence": (2, 3), "text": (2,)}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set of the study, checked on creation.

    Attributes:
        name: The registered name.
        task: ``"tabular"`` ``(N, F)``, ``"image"`` ``(N, H, W, C)``,
            ``"sequence"`` ``(N, T)`` or ``(N, T, C)``, or ``"text"``
            ``(N, T)`` integer token ids.
        x_train, y_train, x_test, y_test: Inputs and integer labels
            (shape ``(N,)``).
        num_classes: Labels lie in ``[0, num_classes)``.
        vocab_size: Text only: ids lie in ``[0, vocab_size)``, 0 is
            padding.
        messy: Whether the training set was deliberately corrupted.
        description: One line on where the data come from.

    Example:

    >>> data = load_dataset("breast_cancer")
    >>> data.x_train.shape, data.num_classes
    ((427, 30), 2)
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    vocab_size: int | None = None
    messy: bool = False
    description: str = ""

    def __post_init__(self):
        _check(self)


def _check(data: Dataset) -> None:
    """Raises ValueError naming the first problem with `data`."""

    def fail(message):
        raise ValueError(f"Dataset {data.name!r}: {message}")

    if data.task not in TASKS:
        fail(f"unknown task {data.task!r}; expected one of {TASKS}.")
    if not isinstance(data.num_classes, int) or data.num_classes < 2:
        fail(f"num_classes must be an int >= 2; got {data.num_classes!r}.")
    for part in ("train", "test"):
        x, y = getattr(data, f"x_{part}"), getattr(data, f"y_{part}")
        if x.ndim not in _NDIM[data.task]:
            fail(
                f"x_{part} of a {data.task} task needs ndim in "
                f"{_NDIM[data.task]}; got shape {x.shape}."
            )
        if y.ndim != 1 or len(y) != len(x) or len(y) == 0:
            fail(
                f"y_{part} must have shape ({len(x)},) with at least one "
                f"example; got {y.shape}."
            )
        if not np.issubdtype(y.dtype, np.integer):
            fail(f"y_{part} must hold integers; got {y.dtype}.")
        if y.min() < 0 or y.max() >= data.num_classes:
            fail(f"y_{part} has labels outside [0, {data.num_classes}).")
    if data.x_train.shape[1:] != data.x_test.shape[1:]:
        fail(
            f"x_train and x_test shapes differ after the first axis: "
            f"{data.x_train.shape} vs {data.x_test.shape}."
        )
    if data.task == "text":
        _check_tokens(data, fail)
    elif data.vocab_size is not None:
        fail("vocab_size is for text tasks only.")
    elif not np.issubdtype(data.x_train.dtype, np.floating):
        fail(f"inputs must be floats; got {data.x_train.dtype}.")


def _check_tokens(data, fail):
    if not isinstance(data.vocab_size, int) or data.vocab_size < 3:
        fail(f"text needs an int vocab_size >= 3; got {data.vocab_size!r}.")
    for x in (data.x_train, data.x_test):
        if not np.issubdtype(x.dtype, np.integer):
            fail(f"text inputs must be integer token ids; got {x.dtype}.")
        if x.min() < 0 or x.max() >= data.vocab_size:
            fail(f"token ids must lie in [0, {data.vocab_size}).")


_REGISTRY: dict[str, Callable[[int], Dataset]] = {}


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """Loads a data set; the same ``(name, seed)`` always gives equal arrays.

    Args:
        name: One of `available_datasets()`.
        seed: Selects the train/test split and, for messy data sets, the
            corruption (offline sets; online sets ignore it).

    Raises:
        ValueError: For an unknown name, listing the known ones.

    Example:

    >>> data = load_dataset("digits_messy", seed=3)
    >>> data.x_train.shape, data.messy
    ((1348, 8, 8, 1), True)
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown data set {name!r}. Available: "
            f"{', '.join(available_datasets())}."
        )
    data = _REGISTRY[name](seed)
    if not isinstance(data, Dataset):
        raise TypeError(
            f"The loader of {name!r} returned {type(data).__name__}, "
            "not a keras_dreg.study.Dataset."
        )
    return data


def available_datasets() -> list[str]:
    """All registered names: offline defaults, online sets, then yours.

    Example:

    >>> available_datasets()[:2]
    ['digits', 'digits_messy']
    """
    return list(_REGISTRY)


def register_dataset(
    name: str,
    loader: Callable[[int], Dataset] | None = None,
    *,
    x_train=None,
    y_train=None,
    x_test=None,
    y_test=None,
    task: str | None = None,
    num_classes: int | None = None,
    vocab_size: int | None = None,
    messy: bool = False,
    description: str = "",
) -> None:
    """Makes `name` loadable by `load_dataset`, from a loader or arrays.

    With `loader`, ``loader(seed)`` must return a `Dataset` (checked at
    each load). With arrays, they are checked now and served unchanged
    for every seed (not standardized): labels are cast to int32 (shape
    ``(N,)`` or ``(N, 1)``), non-text inputs to float32, text inputs to
    int32; `num_classes` defaults to ``max(label) + 1``.

    Raises:
        ValueError: If the name is taken, both or neither of `loader`
            and arrays are given, or the arrays are inconsistent
            (lengths, labels out of range, unknown task, shapes).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x, xt = rng.normal(size=(2, 64, 2)).astype("float32")
    >>> y, yt = (x[:, 0] * x[:, 1] > 0) * 1, (xt[:, 0] * xt[:, 1] > 0) * 1
    >>> register_dataset(
    ...     "xor", task="tabular", x_train=x, y_train=y, x_test=xt, y_test=yt
    ... )
    >>> load_dataset("xor").num_classes
    2
    """
    if name in _REGISTRY:
        raise ValueError(f"A data set named {name!r} is already registered.")
    arrays = (x_train, y_train, x_test, y_test)
    if loader is not None:
        if any(a is not None for a in arrays) or task is not None:
            raise ValueError("Pass either a loader or arrays, not both.")
        _REGISTRY[name] = loader
        return
    if any(a is None for a in arrays) or task is None:
        raise ValueError(
            "Without a loader, pass x_train, y_train, x_test, y_test and task."
        )
    data = _from_arrays(
        name, task, arrays, num_classes, vocab_size, messy, description
    )
    _REGISTRY[name] = lambda seed: data


def _from_arrays(name, task, arrays, num_classes, vocab_size, messy, text):
    x_dtype = np.int32 if task == "text" else np.float32
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in arrays)
    y_train, y_test = _labels(y_train), _labels(y_test)
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(
        name=name,
        task=task,
        x_train=x_train.astype(x_dtype),
        y_train=y_train,
        x_test=x_test.astype(x_dtype),
        y_test=y_test,
        num_classes=int(num_classes),
        vocab_size=vocab_size,
        messy=messy,
        description=text,
    )


def _labels(y: np.ndarray) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.size and not np.array_equal(y, np.round(y)):
        raise ValueError("Labels must be integers.")
    return y.astype(np.int32)


# Offline data sets.


@dataclasses.dataclass(frozen=True)
class _Offline:
    task: str
    num_classes: int
    make_pool: Callable[[], tuple[np.ndarray, np.ndarray]]
    description: str
    vocab_size: int | None = None


def _digits_pool():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[..., None].astype(np.float32), digits.target


def _breast_cancer_pool():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float32), data.target


def _mnist1d_pool():
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    states = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    x = np.concatenate([data["x"], data["x_test"]])[..., None]
    return x.astype(np.float32), np.concatenate([data["y"], data["y_test"]])


def _text_rule_pool():
    rng = np.random.default_rng(TEXT_POOL_SEED)
    y = rng.permutation(np.arange(TEXT_POOL_SIZE) % TEXT_NUM_CLASSES)
    x = np.zeros((TEXT_POOL_SIZE, TEXT_MAXLEN), np.int32)
    for row, label in enumerate(y):
        tokens = _text_rule_tokens(label, rng)
        x[row, : len(tokens)] = tokens
    return x, y


def _text_rule_tokens(label: int, rng: np.random.Generator) -> np.ndarray:
    """One sequence of class `label`, padding not included."""
    negated = rng.random() < 0.5
    top = (label - negated) % TEXT_NUM_CLASSES
    counts = rng.integers(0, 3, size=TEXT_NUM_CLASSES)
    counts[top] = 0
    counts[top] = counts.max() + 1
    keywords = [
        1
        + group * TEXT_KEYWORDS_PER_CLASS
        + rng.integers(0, TEXT_KEYWORDS_PER_CLASS, size=count)
        for group, count in enumerate(counts)
    ]
    negations = np.full(rng.integers(1, 3) if negated else 0, TEXT_NEGATION)
    length = rng.integers(TEXT_MIN_LENGTH, TEXT_MAXLEN + 1)
    distractors = rng.integers(
        TEXT_NEGATION + 1,
        TEXT_VOCAB_SIZE,
        size=length - counts.sum() - len(negations),
    )
    tokens = np.concatenate([*keywords, negations, distractors])
    return rng.permutation(tokens)


_OFFLINE = {
    "digits": _Offline(
        "image",
        10,
        _digits_pool,
        "scikit-learn digits: 8x8 grey-level images of 10 digits",
    ),
    "mnist1d": _Offline(
        "sequence",
        10,
        _mnist1d_pool,
        "MNIST-1D: 1-D signals of length 40 from 10 digit templates",
    ),
    "text_rule": _Offline(
        "text",
        TEXT_NUM_CLASSES,
        _text_rule_pool,
        "synthetic text: most frequent keyword group, shifted by negation",
        vocab_size=TEXT_VOCAB_SIZE,
    ),
    "breast_cancer": _Offline(
        "tabular",
        2,
        _breast_cancer_pool,
        "scikit-learn Wisconsin breast cancer: 30 features, 2 classes",
    ),
}


@functools.lru_cache(maxsize=None)
def _pool(base: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _OFFLINE[base].make_pool()
    x, y = np.asarray(x), np.asarray(y, np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _derived_seed(base: str, seed: int) -> int:
    """A seed for `base` alone, so data sets get unrelated streams."""
    return zlib.crc32(f"{base}/{seed}".encode())


def _load_offline(base: str, messy: bool, seed: int) -> Dataset:
    spec = _OFFLINE[base]
    x, y = _pool(base)
    rng = np.random.default_rng([_derived_seed(base, seed), _SPLIT])
    test = stratified_order(y, TEST_FRACTION, rng)
    train = np.setdiff1d(np.arange(len(y)), test)
    x_train, x_test, y_train = x[train], x[test], y[train]
    if spec.task != "text":
        x_train, x_test = _standardize(x_train, x_test)
    description = spec.description
    if messy:
        x_train, y_train = make_messy(
            x_train,
            y_train,
            spec.num_classes,
            label_noise=LABEL_NOISE,
            input_noise=INPUT_NOISE,
            seed=_derived_seed(base, seed),
            vocab_size=spec.vocab_size,
        )
        description += (
            f"; messy: {LABEL_NOISE:.0%} of labels flipped, "
            f"{INPUT_NOISE:.0%} of inputs corrupted"
        )
    return Dataset(
        name=f"{base}_messy" if messy else base,
        task=spec.task,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y[test],
        num_classes=spec.num_classes,
        vocab_size=spec.vocab_size,
        messy=messy,
        description=description,
    )


def _standardize(x_train, x_test):
    """Float32 copies of both, standardized with the training statistics."""
    x_train = np.array(x_train, dtype=np.float32)
    x_test = np.array(x_test, dtype=np.float32)
    if x_train.ndim == 2:
        mean = x_train.mean(axis=0)
    else:
        mean = global_moments(x_train)[0]
    std = feature_std(x_train)
    for x in (x_train, x_test):
        x -= np.asarray(mean, np.float32)
        x /= np.asarray(std, np.float32)
    return x_train, x_test


# Online data sets (keras.datasets; they download on first use).


def _load_images(name: str, description: str) -> Dataset:
    import keras

    module = getattr(keras.datasets, name)
    (x_train, y_train), (x_test, y_test) = module.load_data()
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    elif keras.config.image_data_format() == "channels_first":
        x_train = x_train.transpose(0, 2, 3, 1)
        x_test = x_test.transpose(0, 2, 3, 1)
    x_train, x_test = _standardize(x_train, x_test)
    return Dataset(
        name=name,
        task="image",
        x_train=x_train,
        y_train=np.asarray(y_train, np.int32).reshape(-1),
        x_test=x_test,
        y_test=np.asarray(y_test, np.int32).reshape(-1),
        num_classes=10,
        description=description,
    )


def _load_tokens(name: str, num_classes: int, description: str) -> Dataset:
    import keras

    module = getattr(keras.datasets, name)
    (x_train, y_train), (x_test, y_test) = module.load_data(
        num_words=ONLINE_NUM_WORDS
    )
    pad = functools.partial(
        keras.utils.pad_sequences, maxlen=ONLINE_MAXLEN, dtype="int32"
    )
    return Dataset(
        name=name,
        task="text",
        x_train=pad(list(x_train)),
        y_train=np.asarray(y_train, np.int32),
        x_test=pad(list(x_test)),
        y_test=np.asarray(y_test, np.int32),
        num_classes=num_classes,
        vocab_size=ONLINE_NUM_WORDS,
        description=description,
    )


_ONLINE = {
    "mnist": lambda: _load_images("mnist", "MNIST handwritten digits"),
    "fashion_mnist": lambda: _load_images(
        "fashion_mnist", "Fashion-MNIST clothing images"
    ),
    "cifar10": lambda: _load_images("cifar10", "CIFAR-10 colour images"),
    "imdb": lambda: _load_tokens("imdb", 2, "IMDB movie-review sentiment"),
    "reuters": lambda: _load_tokens("reuters", 46, "Reuters newswire topics"),
}


def _load_online_messy(base: str, seed: int) -> Dataset:
    """The online set `base` with its training set corrupted (`seed`)."""
    data = _ONLINE[base]()
    x_train, y_train = make_messy(
        data.x_train,
        data.y_train,
        data.num_classes,
        label_noise=LABEL_NOISE,
        input_noise=INPUT_NOISE,
        seed=_derived_seed(base, seed),
        vocab_size=data.vocab_size,
    )
    return dataclasses.replace(
        data,
        name=f"{base}_messy",
        x_train=x_train,
        y_train=y_train,
        messy=True,
        description=f"{data.description}; messy: {LABEL_NOISE:.0%} of "
        f"labels flipped, {INPUT_NOISE:.0%} of inputs corrupted",
    )


def _register_builtins() -> None:
    for base in _OFFLINE:
        for messy in (False, True):
            name = f"{base}_messy" if messy else base
            _REGISTRY[name] = functools.partial(_load_offline, base, messy)
    for name, load in _ONLINE.items():
        _REGISTRY[name] = lambda seed, load=load: load()
    for name in _ONLINE:
        messy = functools.partial(_load_online_messy, name)
        _REGISTRY[f"{name}_messy"] = messy


_register_builtins()
