"""Training penalties behind one protocol (`Penalty`)."""

from keras_dreg.penalties.base import Batch
from keras_dreg.penalties.base import Penalty
from keras_dreg.penalties.dreg import DREG
from keras_dreg.penalties.input_gradient import InputGradientPenalty
from keras_dreg.penalties.jacobian import JacobianPenalty
from keras_dreg.penalties.weight_decay import WeightDecay

__all__ = [
    "DREG",
    "Batch",
    "InputGradientPenalty",
    "JacobianPenalty",
    "Penalty",
    "WeightDecay",
]
