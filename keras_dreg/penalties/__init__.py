"""Training penalties behind one protocol (`Penalty`)."""

from keras_dreg.penalties.base import Batch
from keras_dreg.penalties.base import Penalty
from keras_dreg.penalties.dreg import DREG

__all__ = ["DREG", "Batch", "Penalty"]
