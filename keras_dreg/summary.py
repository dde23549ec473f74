"""`dreg_summary()`: what DREG regularizes in a model, and what not."""

import keras

from keras_dreg import capture


def format_survey(model: keras.Model, state) -> str:
    """A table of every kernel layer and nonlinear activation of `model`.

    Regularized rows show the path DREG follows (`kernel -> batch norm ->
    activation`) and the activation found; the others say why they are
    left out (a normalization that mixes units, an activation after
    `Add`, a recurrent layer, a softmax head, an exclusion, ...).

    Args:
        model: The model.
        state: DREG's state for `model` (`model.penalty_state(dreg)`).

    Returns:
        The table, one line per layer, as a string.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, activation="gelu", name="hidden")(inputs)
    >>> outputs = keras.layers.Dense(2, name="head")(x)
    >>> model = keras_dreg.wrap(keras.Model(inputs, outputs))
    >>> print(format_survey(model, model.penalty_state(model.dreg)))
    DREG summary of '...': 1 layer(s) regularized, 1 not
    ...
    hidden (Dense) ... regularized
    head (Dense) ... no: linear (include_linear=True adds ||W||^2 per position)
    ...
    """
    sites = state.capture.sites
    left_out = state.survey.unregularized
    rows = [("Layer (type)", "Activation", "DREG")]
    for site in sites:
        rows.append((_path(site), site.activation.name, "regularized"))
    for entry in left_out:
        rows.append(
            (
                f"{entry.layer.name} ({type(entry.layer).__name__})",
                entry.activation,
                f"no: {entry.reason}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in (0, 1)]
    rule = "-" * 78
    lines = [
        f"DREG summary of '{model.name}': {len(sites)} layer(s) "
        f"regularized, {len(left_out)} not",
        rule,
    ]
    for i, (name, activation, status) in enumerate(rows):
        lines.append(
            f"{name:<{widths[0]}}  {activation:<{widths[1]}}  {status}"
        )
        if i == 0:
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines)


def _path(site: capture.RegularizedLayer) -> str:
    path = [f"{site.layer.name} ({type(site.layer).__name__})"]
    for layer in (site.batch_norm, site.activation_layer):
        if layer is not None:
            path.append(layer.name)
    return " -> ".join(path)
