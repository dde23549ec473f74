"""The same weights and batch give the same penalty and gradients on
TensorFlow, JAX and PyTorch (reference values in a fixture).

Each tensor is compared normwise: `max|a - b| <= 1e-5 * max|b|`. Its
small entries are sums of float32 products taken in a different order
on each backend, so an elementwise relative bound would measure
rounding, not agreement.
"""

import numpy as np

from tests import parity_model


def test_penalty_and_gradients_match_the_fixture():
    model, x = parity_model.build()
    measured = parity_model.measure(model, x)
    with np.load(parity_model.FIXTURE) as fixture:
        expected = {k: fixture[k] for k in fixture.files if k != "backend"}
    assert sorted(measured) == sorted(expected)
    for key, value in expected.items():
        tolerance = 1e-5 * np.max(np.abs(value))
        np.testing.assert_allclose(
            measured[key], value, rtol=0, atol=tolerance, err_msg=key
        )
    assert {"term_conv_gelu", "term_conv_bn", "term_dense_tanh"} <= set(
        measured
    )
