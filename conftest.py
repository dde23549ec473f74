"""What the docstring examples in `keras_dreg/` need under pytest's doctest.

Run them with one backend (CI uses jax):

    KERAS_BACKEND=jax python -m pytest --doctest-modules keras_dreg

Every example sees `np`, `keras`, `keras_dreg`, `os` and the names of its
own module (doctest's default), plus `tmp_dir`, a fresh temporary
directory. An example that needs real data or long training carries
`# doctest: +SKIP` and a comment saying why.
"""

import os

import keras
import numpy as np
import pytest

import keras_dreg


@pytest.fixture(autouse=True)
def _doctest_namespace(request, doctest_namespace, tmp_path):
    keras.utils.set_random_seed(0)
    doctest_namespace.update(
        np=np, keras=keras, keras_dreg=keras_dreg, os=os, tmp_dir=str(tmp_path)
    )
    # The study's examples use its public names (`preset`, `load_dataset`).
    if request.node.name.startswith("keras_dreg.study."):
        from keras_dreg import study

        doctest_namespace.update({n: getattr(study, n) for n in study.__all__})
