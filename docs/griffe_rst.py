"""A griffe extension for the API reference: the docstrings of aion_green
are Sphinx-flavoured prose, so turn its two reStructuredText habits into
Markdown before mkdocstrings renders them.

- A role, ``:class:`~aion_green.Engine``` or ``:meth:`Engine.start```,
  becomes inline code: ``Engine`` (a leading ``~`` keeps the last name, as
  Sphinx does). Not a link: many roles name modules the reference does not
  render, and a dangling cross-reference fails ``mkdocs build --strict``.
- A paragraph ending in ``::`` ends in ``:``, and the indented block after
  it becomes a fenced code block.

Double backticks need nothing: ````x```` is a code span in Markdown too.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def markdown(text: str) -> str:
    """The docstring ``text`` with roles and ``::`` made Markdown."""
    lines = _ROLE.sub(_role, text).split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not (line.rstrip().endswith("::") and i < len(lines) and not lines[i].strip()):
            out.append(line)
            continue
        out.append(line.rstrip()[:-1])
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i][:1] in " \t"):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        indent = min(len(b) - len(b.lstrip()) for b in block if b.strip()) if block else 0
        out += ["", "```python", *(b[indent:] for b in block), "```", ""]
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring griffe loads (see the module's docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
