"""``aion-green`` command line (the full CLI is issue 7): for now, the demo."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(args[1:])
    print("usage: aion-green demo [--db PATH]   (more commands come with the CLI issue)")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
