"""Check a built keras-dreg wheel, installed outside the source tree.

Usage (from a directory outside the repository, see .ci/run):

    KERAS_BACKEND=jax PYTHONPATH=<site> python scripts/check_wheel.py \
        <wheel> <site>

where <site> is the folder the wheel was installed into with
`pip install --no-deps --target <site> <wheel>`.

Checks:
- the wheel holds only the `keras_dreg` package and its dist-info (no
  tests/, examples/, ...), and declares the `keras-dreg` console script;
- `import keras_dreg` resolves to <site>, not to the source tree;
- a small functional `DREGRegularizedModel` compiles and fits one epoch and
  reports a `dreg_penalty` entry in its history.
"""

import os
import sys
import zipfile
from pathlib import Path


def check_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = sorted({name.split("/", 1)[0] for name in names})
        dist_info = [t for t in top if t.endswith(".dist-info")]
        assert len(dist_info) == 1, f"expected one .dist-info, got {top}"
        assert dist_info[0].startswith("keras_dreg-"), dist_info
        unexpected = [t for t in top if t not in ("keras_dreg", dist_info[0])]
        assert not unexpected, f"unexpected top-level entries: {unexpected}"
        assert "keras_dreg/__init__.py" in names, "keras_dreg/ missing"
        tests = [
            n
            for n in names
            if "tests" in n.split("/")[:-1] or n.endswith("conftest.py")
        ]
        assert not tests, f"wheel contains tests: {tests[:5]}"
        entry_points = zf.read(f"{dist_info[0]}/entry_points.txt").decode()
        assert "keras-dreg = keras_dreg.cli:main" in entry_points, entry_points
        has_cli = "keras_dreg/cli.py" in names
    print(f"wheel contents OK: {len(names)} files, top level {top}")
    return has_cli


def check_import_and_fit(site, has_cli):
    import keras
    import numpy as np

    import keras_dreg

    package_file = Path(keras_dreg.__file__).resolve()
    assert package_file.is_relative_to(site), (
        f"keras_dreg imported from {package_file}, not from the wheel in {site}"
    )
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"], (
        keras.backend.backend()
    )
    from keras_dreg.version import __version__

    assert keras_dreg.__version__ == __version__, keras_dreg.__version__
    print(
        f"keras_dreg {keras_dreg.__version__} imported from {package_file} "
        f"(keras {keras.__version__}, backend {keras.backend.backend()})"
    )

    if has_cli:
        from keras_dreg.cli import main

        assert callable(main), main
    else:
        print(
            "WARNING: the wheel has no keras_dreg/cli.py: the keras-dreg "
            "console script points at a missing module",
            file=sys.stderr,
        )

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="gelu")(inputs)
    outputs = keras.layers.Dense(2)(hidden)
    model = keras_dreg.DREGRegularizedModel(inputs=inputs, outputs=outputs)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert "dreg_penalty" in history.history, sorted(history.history)
    penalty = history.history["dreg_penalty"][-1]
    assert np.isfinite(penalty), penalty
    print(f"fit OK: history keys {sorted(history.history)}")


def main():
    wheel, site = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    has_cli = check_wheel_contents(wheel)
    check_import_and_fit(site, has_cli)
    print("wheel check passed")


if __name__ == "__main__":
    main()
