"""keras-dreg: the DREG layer-wise Jacobian regularizer for Keras 3.

DREG adds `lam * sum_l mean sum_j phi'(z_j)^2 ||w_j||^2` to the training
loss, the squared Frobenius norm of each layer's Jacobian, computed in
closed form with `keras.ops` on TensorFlow, JAX and PyTorch.
"""

from keras_dreg import callbacks
from keras_dreg import derivatives
from keras_dreg import penalties
from keras_dreg.capture import RegularizedLayer
from keras_dreg.capture import UnregularizedWarning
from keras_dreg.derivatives import register_derivative
from keras_dreg.model import DEFAULT_LAM
from keras_dreg.model import DREGRegularizedModel
from keras_dreg.model import wrap
from keras_dreg.penalized_model import PenalizedModel
from keras_dreg.penalized_model import PenalizedWrapper
from keras_dreg.regularizers import REGULARIZERS
from keras_dreg.regularizers import regularize
from keras_dreg.version import __version__

__all__ = [
    "DEFAULT_LAM",
    "DREGRegularizedModel",
    "PenalizedModel",
    "PenalizedWrapper",
    "REGULARIZERS",
    "RegularizedLayer",
    "UnregularizedWarning",
    "__version__",
    "callbacks",
    "derivatives",
    "penalties",
    "register_derivative",
    "regularize",
    "wrap",
]
