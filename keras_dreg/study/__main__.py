"""`python -m keras_dreg.study run|report|status`: `keras-dreg study`."""

import sys

from keras_dreg.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
