"""The study's four regimes and the data transformations behind them.

Every finding of the study is reported per regime:

- ``"clean"``: the four clean data sets (``Dataset.messy`` is False),
  trained on the full training set and scored on the clean test set.
- ``"messy"``: the four messy twins of the clean data sets, trained on a
  corrupted training set (see `make_messy`) and scored on the *clean*
  test set, which they share with their clean twin.
- ``"noise"``: noise robustness. A model trained as in ``"clean"`` or
  ``"messy"`` is scored a second time, on corrupted test inputs
  (`corrupt_test_inputs`), with no further training.
- ``"scarcity"``: data scarcity. The model is trained on a stratified
  fraction of the training set (`subsample`, fractions
  `TRAIN_FRACTIONS`) and scored on the full clean test set.

One corruption model serves both the messy training sets and the
noise-robustness test inputs, so that "messy" and "noise" measure the
same kind of damage, once during training and once at test time:

- Float inputs get Gaussian noise with standard deviation
  `NOISE_STD` (0.5) times the feature standard deviation of the
  *training* inputs: per feature for ``(N, F)`` arrays (tabular data),
  one global value for arrays with more axes (images, signals), so an
  image's constant background gets noise too.
- Token inputs (text) get random token replacement: each non-padding
  token is replaced, with probability `TOKEN_REPLACE_RATE` (0.2), by a
  different token drawn uniformly from ``1 .. vocab_size - 1``. Padding
  (id 0) is never touched and never produced.

The messy training sets additionally flip `LABEL_NOISE` (20 %) of the
training labels, each to a class drawn uniformly from the *other*
classes, and corrupt `INPUT_NOISE` (20 %) of the training inputs as
above. The counts are exact (``round(rate * n)`` examples, chosen
without replacement), not Bernoulli draws. These amounts are fixed
before any experiment and are common values in the label-noise
literature; nothing was tuned toward any regularizer.

All functions are deterministic for a given ``seed`` and leave their
inputs unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from keras_dreg.study.datasets import Dataset

REGIMES = ("clean", "messy", "noise", "scarcity")
"""The regimes the study reports on (see above)."""
TRAIN_FRACTIONS = (0.1, 0.25, 1.0)
"""The training-set fractions of the `paper` preset (data scarcity)."""

LABEL_NOISE = 0.2
INPUT_NOISE = 0.2
NOISE_STD = 0.5
TOKEN_REPLACE_RATE = 0.2

# Stream tags keep the random streams of different uses independent.
_SUBSAMPLE, _TEST_NOISE, _LABELS, _INPUTS = 11, 12, 13, 14


def feature_std(x: np.ndarray) -> np.ndarray:
    """The standard deviation used to scale noise and to standardize.

    Per feature (axis 0) for a 2-D array, one global value otherwise;
    zeros are replaced by ones so that constant features stay finite.

    Example:

    >>> feature_std(np.array([[0.0, 1.0], [2.0, 1.0]]))
    array([1., 1.])
    """
    x = np.asarray(x)
    std = x.std(axis=0) if x.ndim == 2 else global_moments(x)[1]
    return np.where(std > 0, std, 1.0)


def global_moments(x: np.ndarray, chunk: int = 4096) -> tuple[float, float]:
    """Mean and standard deviation of all of `x`, in float64 chunks.

    Avoids the full float64 copy that `np.std` makes of a large array.

    Example:

    >>> global_moments(np.array([1.0, 3.0]))
    (2.0, 1.0)
    """
    x = np.asarray(x)
    rows = range(0, len(x), chunk)
    total = sum(np.sum(x[i : i + chunk], dtype=np.float64) for i in rows)
    mean = total / x.size
    squares = sum(
        np.sum((x[i : i + chunk].astype(np.float64) - mean) ** 2) for i in rows
    )
    return float(mean), float(np.sqrt(squares / x.size))


def stratified_order(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of a stratified sample of ``fraction`` of `labels`.

    The sample has exactly ``max(#classes, round(fraction * n))``
    elements; each class present gets its share by largest remainder,
    and at least one element. Each class is drawn as a prefix of a
    random permutation, so for one `rng` state smaller fractions give
    subsets of larger ones.

    Example:

    >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> len(stratified_order(y, 0.5, np.random.default_rng(0)))
    4
    """
    classes, counts = np.unique(labels, return_counts=True)
    total = max(len(classes), int(round(fraction * len(labels))))
    quotas = _largest_remainder(counts, total)
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:q]
        for c, q in zip(classes, quotas)
    ]
    return np.sort(np.concatenate(chosen))


def _largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """Splits `total` over classes in proportion to `counts`, each >= 1."""
    exact = counts * (total / counts.sum())
    quotas = np.clip(np.floor(exact).astype(int), 1, counts)
    while quotas.sum() > total:
        quotas[np.argmax(np.where(quotas > 1, quotas - exact, -np.inf))] -= 1
    while quotas.sum() < total:
        quotas[
            np.argmax(np.where(quotas < counts, exact - quotas, -np.inf))
        ] += 1
    return quotas


def subsample(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """The data set with a stratified ``fraction`` of its training set.

    The test set is unchanged. Per class, ``round(fraction * n)`` training
    examples in total, shared out by largest remainder (at least one per
    class), kept in their original order. For one ``seed``, the sample at
    a smaller fraction is a subset of the sample at a larger one, so a
    data-scarcity curve adds data rather than redrawing it.
    ``fraction=1.0`` keeps the whole training set.

    Example:

    >>> small = subsample(load_dataset("digits"), 0.1, seed=0)
    >>> len(small.y_train)
    135
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}.")
    rng = np.random.default_rng([seed, _SUBSAMPLE])
    keep = stratified_order(dataset.y_train, fraction, rng)
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train[keep],
        y_train=dataset.y_train[keep],
    )


def corrupt_test_inputs(dataset: Dataset, seed: int) -> np.ndarray:
    """The test inputs of `dataset`, corrupted for the noise regime.

    Float data: every test input gets Gaussian noise of standard
    deviation ``NOISE_STD * feature_std(x_train)``. Text: every
    non-padding token is replaced with probability `TOKEN_REPLACE_RATE`
    by a different non-padding token. Labels are unchanged.

    Example:

    >>> data = load_dataset("digits")
    >>> noisy = corrupt_test_inputs(data, seed=0)
    >>> noisy.shape == data.x_test.shape
    True
    """
    rng = np.random.default_rng([seed, _TEST_NOISE])
    if dataset.vocab_size is not None:
        return _replace_tokens(
            dataset.x_test, TOKEN_REPLACE_RATE, dataset.vocab_size, rng
        )
    scale = NOISE_STD * feature_std(dataset.x_train)
    return _add_noise(dataset.x_test, scale, rng)


def _add_noise(
    x: np.ndarray, scale: np.ndarray | float, rng: np.random.Generator
) -> np.ndarray:
    """``x`` plus Gaussian noise of standard deviation `scale`, in x's dtype."""
    noise = rng.standard_normal(x.shape) * scale
    return (x + noise).astype(x.dtype)


def _replace_tokens(
    tokens: np.ndarray, rate: float, vocab_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Replaces each non-padding token with probability `rate`.

    A replaced token becomes a different id drawn uniformly from
    ``1 .. vocab_size - 1``; padding (0) is kept as it is.
    """
    hit = (tokens != 0) & (rng.random(tokens.shape) < rate)
    shift = rng.integers(1, vocab_size - 1, size=tokens.shape)
    replaced = 1 + (tokens - 1 + shift) % (vocab_size - 1)
    return np.where(hit, replaced, tokens).astype(tokens.dtype)


def make_messy(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    *,
    label_noise: float,
    input_noise: float,
    seed: int,
    vocab_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupts a training set: flipped labels and damaged inputs.

    Exactly ``round(label_noise * n)`` labels, chosen without
    replacement, move to a class drawn uniformly from the other
    ``num_classes - 1``. Independently, exactly
    ``round(input_noise * n)`` inputs are corrupted: Gaussian noise of
    ``NOISE_STD * feature_std(x)`` for float inputs, or, when
    `vocab_size` is given, token replacement at `TOKEN_REPLACE_RATE`.
    The study uses ``label_noise=LABEL_NOISE`` and
    ``input_noise=INPUT_NOISE``.

    Args:
        x: Training inputs, float features or int token ids.
        y: Integer labels in ``[0, num_classes)``, shape ``(n,)``.
        num_classes: Number of classes (>= 2).
        label_noise: Fraction of labels to flip, in [0, 1].
        input_noise: Fraction of inputs to corrupt, in [0, 1].
        seed: Seed of the corruption.
        vocab_size: For token inputs, the vocabulary size.

    Returns:
        New ``(x, y)`` arrays of the same shapes and dtypes.

    Example:

    >>> x, y = np.zeros((10, 2)), np.arange(10) % 2
    >>> _, noisy = make_messy(
    ...     x, y, 2, label_noise=0.2, input_noise=0.0, seed=0
    ... )
    >>> int((noisy != y).sum())
    2
    """
    for name, rate in (
        ("label_noise", label_noise),
        ("input_noise", input_noise),
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {rate}.")
    return (
        _corrupt_inputs(x, input_noise, seed, vocab_size),
        _flip_labels(y, num_classes, label_noise, seed),
    )


def _flip_labels(y, num_classes, rate, seed):
    rng = np.random.default_rng([seed, _LABELS])
    chosen = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen))
    y = y.copy()
    y[chosen] = (y[chosen] + shift) % num_classes
    return y


def _corrupt_inputs(x, rate, seed, vocab_size):
    rng = np.random.default_rng([seed, _INPUTS])
    chosen = rng.choice(len(x), size=int(round(rate * len(x))), replace=False)
    x = x.copy()
    if vocab_size is not None:
        x[chosen] = _replace_tokens(
            x[chosen], TOKEN_REPLACE_RATE, vocab_size, rng
        )
    else:
        x[chosen] = _add_noise(x[chosen], NOISE_STD * feature_std(x), rng)
    return x
