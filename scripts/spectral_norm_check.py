"""spectral_norm vs none on the study's own runs, on this backend.

digits and mnist1d, gelu and relu, seed 0, 10 epochs, full training
set: prints each pair's clean test accuracy and the gap, and exits 1
if spectral_norm is more than 3 pp below none anywhere. Run once per
backend:

    KERAS_BACKEND=torch python scripts/spectral_norm_check.py
"""

import sys

import keras

from keras_dreg.study.config import RunConfig
from keras_dreg.study.runner import train_run

LIMIT = 0.03


def main() -> int:
    backend = keras.backend.backend()
    worst = 0.0
    for dataset in ("digits", "mnist1d"):
        for activation in ("gelu", "relu"):
            accuracy = {
                reg: train_run(
                    RunConfig(
                        activation, reg, dataset, 1.0, 0, 10, 64, 1e-3, backend
                    )
                ).accuracy
                for reg in ("none", "spectral_norm")
            }
            gap = accuracy["spectral_norm"] - accuracy["none"]
            worst = min(worst, gap)
            print(
                f"{backend} {dataset} {activation}: none "
                f"{100 * accuracy['none']:.2f}, spectral_norm "
                f"{100 * accuracy['spectral_norm']:.2f}, gap "
                f"{100 * gap:+.2f} pp",
                flush=True,
            )
    print(f"{backend}: worst gap {100 * worst:+.2f} pp (limit -3 pp)")
    return 0 if worst >= -LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
