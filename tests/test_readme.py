"""The README's Python example runs as written and trains."""

import re
from pathlib import Path

import keras

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_example_is_self_contained_and_trains():
    (block,) = python_blocks()
    # Quieter and shorter, nothing else changed: no progress bar, 2 epochs.
    source = block.replace("epochs=5)", "epochs=2, verbose=0)")
    assert source != block, "the README's fit call changed; update the test"
    namespace = {}
    exec(compile(source, str(README), "exec"), namespace)
    model, history = namespace["model"], namespace["model"].history
    assert isinstance(model, keras.Model)
    assert len(history.history["dreg_penalty"]) == 2
    assert history.history["dreg_penalty"][-1] > 0
    # The toy task is learnable: far above chance (0.1) after 2 epochs.
    assert history.history["accuracy"][-1] > 0.5
