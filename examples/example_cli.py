"""The command line the example scripts share: `--epochs` and `--quick`.

Each script adds its own options to `make_parser(...)` and reads them with
`parse_args(parser)`; `--quick` sets the epochs to 2 (CI sizes).
"""

import argparse

QUICK_EPOCHS = 2


def make_parser(
    doc: str, epochs: int, quick_help: str = "2 epochs: CI sizes."
) -> argparse.ArgumentParser:
    """A parser with `--epochs` (default `epochs`) and `--quick`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=epochs)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed options, with `--quick` applied to `epochs`."""
    args = parser.parse_args()
    if args.quick:
        args.epochs = QUICK_EPOCHS
    return args


def positive_int(text: str) -> int:
    """An `argparse` type: an integer >= 1, else one clear error."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
