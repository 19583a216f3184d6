"""The command-line reference, rendered from ``aion-green``'s own parser.

A MkDocs hook (``hooks:`` in ``mkdocs.yml``): in ``reference/cli.md`` it
replaces the line ``<!-- aion-green commands -->`` with the ``--help`` of
the program and of every command and schedule action, in the parser's
order, so a new command or option is documented by the next build. It also
checks that the page's table of exit codes lists every ``EXIT_*`` code of
``aion_green.cli``; a missing one is a warning, which ``--strict`` makes an
error. Nothing is fetched: the parser is built from the installed package.

``python docs/gen_cli.py`` prints the generated part.
"""
from __future__ import annotations

import argparse
import logging
import re
from typing import Any, Iterator

MARKER = "<!-- aion-green commands -->"
PAGE = "reference/cli.md"
WIDTH = 88

log = logging.getLogger("mkdocs.hooks.gen_cli")


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:  # an alias is the same parser again
                    seen.add(id(sub))
                    yield sub


def _walk(parser: argparse.ArgumentParser, depth: int = 0) -> Iterator[tuple[int, argparse.ArgumentParser]]:
    yield depth, parser
    for sub in _subcommands(parser):
        yield from _walk(sub, depth + 1)


def _help(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so the page does not depend on the terminal of the build.
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
    return parser.format_help().rstrip()


def render() -> str:
    """Markdown: one section per command, each its ``--help``."""
    from aion_green.cli import _parser

    parts = []
    for depth, parser in _walk(_parser()):
        level = "###" if depth < 2 else "####"  # under the page's "Commands"
        parts.append(f"{level} `{parser.prog}`\n\n```text\n{_help(parser)}\n```\n")
    return "\n".join(parts)


def command_names() -> list[str]:
    """Every command's ``prog`` (``aion-green start``, ``aion-green schedule create``...)."""
    from aion_green.cli import _parser

    return [parser.prog for depth, parser in _walk(_parser()) if depth]


def missing_exit_codes(markdown: str) -> list[int]:
    """The ``EXIT_*`` codes of ``aion_green.cli`` that no table row of
    ``markdown`` begins with."""
    import aion_green.cli as cli

    listed = {int(m) for m in re.findall(r"^\|\s*(\d+)\s*\|", markdown, re.MULTILINE)}
    codes = {value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    return sorted(codes - listed)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning("%s: the line %s is missing; the commands are not rendered", PAGE, MARKER)
        return markdown
    for code in missing_exit_codes(markdown):
        log.warning("%s: exit code %d of aion_green.cli is not in the table", PAGE, code)
    return markdown.replace(MARKER, render())


if __name__ == "__main__":
    print(render())
