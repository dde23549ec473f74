"""A Griffe extension that reads Keras-style example sections.

Keras writes a docstring's examples unindented, one blank line below the
header:

    Example:

    >>> layer = keras.layers.Dense(3)

Google style, which mkdocstrings parses, wants the body indented under
the header, with no blank line between, and parses `>>>` lines as code
only under an `Examples:` header (`Example:` is an admonition). This
extension rewrites the first form into the second before parsing, so
that the docstrings keep the Keras house style and the API pages still
show their examples as code. mkdocs.yml loads it (`extensions:` of the
python handler).
"""

import re

import griffe

_EXAMPLE_HEADER = re.compile(r"^Examples?:( .*)?$")
# An unindented Google section header ("Args:", "Returns:", ...) ends the
# example body.
_SECTION_HEADER = re.compile(r"^[A-Z][\w ]*:( .*)?$")


def indent_examples(text: str) -> str:
    """Indents the body of each Keras-style example section of `text`.

    Example:

    >>> indent_examples("Summary.\\n\\nExample:\\n\\n>>> f()\\n")
    'Summary.\\n\\nExamples:\\n    >>> f()\\n'
    """
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        i += 1
        header = _EXAMPLE_HEADER.match(out[-1])
        if not header:
            continue
        start = i
        while start < len(lines) and not lines[start].strip():
            start += 1
        if start == i or start == len(lines) or lines[start][0] == " ":
            continue  # Google style already, or no body.
        out[-1] = "Examples:" + (header.group(1) or "")
        i, in_fence = start, False
        while i < len(lines):
            line = lines[i]
            if not in_fence and _SECTION_HEADER.match(line):
                break
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
            out.append("    " + line if line.strip() else "")
            i += 1
    return "\n".join(out)


class KerasExamples(griffe.Extension):
    """Rewrites Keras-style example sections as Google-style ones."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = indent_examples(obj.docstring.value)
