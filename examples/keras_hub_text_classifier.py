"""A KerasHub text classifier fine-tuned with DREG and without.

The classifier is `keras_hub.models.BertTextClassifier` on a tiny
random-init `BertBackbone` (built from its constructor: nothing is
downloaded, no tokenizer is needed), fed the token ids of `text_rule`,
the study's offline synthetic text task. DREG regularizes the backbone's
feed-forward `Dense` layers (KerasHub's `gelu_approximate`, in closed
form) and its pooler (tanh); the attention projections have no activation
and are skipped. Both runs start from the same initial weights and see
the same batches; the script prints each one's test accuracy and saves a
plot of both validation-accuracy curves.

Needs `pip install keras-dreg[hub]` (see requirements-hub.txt). Run it on
any backend:

    KERAS_BACKEND=jax python examples/keras_hub_text_classifier.py
    KERAS_BACKEND=tensorflow python examples/keras_hub_text_classifier.py \\
        --quick  # CI sizes
"""

import argparse
import os
import tempfile

import example_cli
import keras
import keras_hub
import numpy as np

import keras_dreg
from keras_dreg.study.datasets import Dataset
from keras_dreg.study.datasets import load_dataset

QUICK_TRAIN_SIZE = 1000


def parse_args() -> argparse.Namespace:
    parser = example_cli.make_parser(
        __doc__,
        epochs=10,
        quick_help=f"2 epochs on {QUICK_TRAIN_SIZE} training sequences: CI "
        "sizes.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot",
        default=os.path.join(tempfile.gettempdir(), "keras_hub_dreg.png"),
        help="where to save the curves (PNG)",
    )
    return example_cli.parse_args(parser)


def bert_inputs(token_ids: np.ndarray) -> dict:
    """The backbone's inputs for `token_ids` (0 is padding in text_rule)."""
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": token_ids != 0,
    }


def build_classifier(data: Dataset, seed: int) -> keras.Model:
    """A tiny BERT classifier; the same initial weights for a given seed."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=data.vocab_size,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=data.x_train.shape[1],
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=data.num_classes, preprocessor=None
    )


def train(lam: float, data: Dataset, args) -> keras.callbacks.History:
    """Fine-tunes one classifier under DREG with strength `lam` (0: none)."""
    model = keras_dreg.wrap(build_classifier(data, args.seed), lam=lam)
    if lam:
        print(f"DREG regularizes: {model.dreg_layers}")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(args.seed)  # The same batch order.
    size = QUICK_TRAIN_SIZE if args.quick else len(data.x_train)
    return model.fit(
        bert_inputs(data.x_train[:size]),
        data.y_train[:size],
        validation_data=(bert_inputs(data.x_test), data.y_test),
        epochs=args.epochs,
        batch_size=64,
        verbose=2,
    )


def plot(histories: dict, path: str) -> None:
    """Both runs' validation accuracy per epoch, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        accuracy = history.history["val_accuracy"]
        ax.plot(range(1, len(accuracy) + 1), accuracy, marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="test accuracy", title="BERT on text_rule")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    args = parse_args()
    data = load_dataset("text_rule", seed=args.seed)
    print(f"backend: {keras.backend.backend()}, text_rule, {args.epochs} ep.")
    histories = {
        "no regularization": train(0.0, data, args),
        f"DREG (lam={keras_dreg.DEFAULT_LAM:.4g})": train(
            keras_dreg.DEFAULT_LAM, data, args
        ),
    }
    for name, history in histories.items():
        final = history.history["val_accuracy"][-1]
        print(f"{name:>24}: test accuracy {final:.4f}")
    plot(histories, args.plot)
    print(f"curves: {args.plot}")


if __name__ == "__main__":
    main()
