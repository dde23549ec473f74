"""The docs: every public name is documented with an example, and the
quick start runs as written."""

import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import keras
import pytest

import keras_dreg

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Modules whose `__all__` is the public API; each name must be on an API
# page (`docs/api/*.md`, as a `::: path` directive).
PUBLIC_MODULES = ("keras_dreg", "keras_dreg.penalties", "keras_dreg.study")
# Submodules with an API page of their own, and the version string.
DOCUMENTED_AS_PAGE = {"__version__", "callbacks", "derivatives", "penalties"}
# Modules without `__all__`: their public functions and classes (defined
# there, not starting with `_`) must be on an API page.
MODULES_WITHOUT_ALL = (
    "keras_dreg.callbacks",
    "keras_dreg.derivatives",
    "keras_dreg.regularizers",
)

EXAMPLE_HEADER = re.compile(r"^\s*Examples?:", re.MULTILINE)


def _api_paths() -> list[str]:
    paths = []
    for page in sorted((DOCS / "api").glob("*.md")):
        paths += re.findall(r"^::: (\S+)$", page.read_text(), re.MULTILINE)
    return paths


def _resolve(path: str):
    """The object at a dotted `path`, importing its module first."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def _public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    if module_name not in MODULES_WITHOUT_ALL:
        return [n for n in module.__all__ if n not in DOCUMENTED_AS_PAGE]
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module_name
    ]


def test_every_public_name_is_on_an_api_page():
    documented = {id(_resolve(path)) for path in _api_paths()}
    missing = [
        f"{module}.{name}"
        for module in PUBLIC_MODULES + MODULES_WITHOUT_ALL
        for name in _public_names(module)
        if id(getattr(importlib.import_module(module), name)) not in documented
    ]
    assert not missing, f"Not on any docs/api page: {missing}"


def test_every_documented_name_has_a_docstring_with_an_example():
    # Griffe reads the docstrings as the API pages do, also those of
    # constants (a string literal below the assignment).
    griffe = pytest.importorskip("griffe")
    package = griffe.load("keras_dreg", search_paths=[str(ROOT)])
    without_docstring, without_example = [], []
    for path in _api_paths():
        obj = package[path.removeprefix("keras_dreg.")]
        text = obj.docstring.value if obj.docstring else ""
        if not text:
            without_docstring.append(path)
        elif (obj.is_class or obj.is_function) and not EXAMPLE_HEADER.search(
            text
        ):
            without_example.append(path)
    assert not without_docstring, f"No docstring: {without_docstring}"
    assert not without_example, f"No Example section: {without_example}"


def test_quickstart_runs(tmp_path, monkeypatch):
    """Runs the quick start's python blocks in order, as written but for
    one epoch per fit on the first 256 examples (to keep it fast)."""
    pytest.importorskip("sklearn")
    text = (DOCS / "quickstart.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace = {}
    try:
        for block in blocks:
            code = block.replace("epochs=5", "epochs=1")
            exec(compile(code, str(DOCS / "quickstart.md"), "exec"), namespace)
            for name in ("x_train", "y_train", "x_test", "y_test"):
                if name in namespace:
                    namespace[name] = namespace[name][:256]
        assert isinstance(namespace["model"], keras_dreg.PenalizedModel)
    finally:
        # Fresh layer names for the tests that follow.
        keras.backend.clear_session()


def test_keras_style_examples_become_google_sections():
    pytest.importorskip("griffe")
    path = ROOT / "scripts" / "griffe_keras_docstrings.py"
    spec = importlib.util.spec_from_file_location("griffe_keras", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keras_style = (
        "Summary.\n\nExample: two calls.\n\n>>> f()\n\n```python\n"
        "Args: not a header\n```\n\nArgs:\n    x: An input.\n"
    )
    assert module.indent_examples(keras_style) == (
        "Summary.\n\nExamples: two calls.\n    >>> f()\n\n    ```python\n"
        "    Args: not a header\n    ```\n\nArgs:\n    x: An input.\n"
    )
    google_style = "Summary.\n\nExamples:\n    >>> f()\n"
    assert module.indent_examples(google_style) == google_style
