"""The local stack of real servers: `anysat-stac stack up|down|status|env|catalogs` (= `python -m infra.local`).

Runs from a checkout (the stack builds its catalogs from the checkout's `data/samples/`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from infra.local.__main__ import main as stack_main
    except ImportError as err:
        print(f"stack: the local stack is not installed here ({err}); run it from a checkout with the dev extra "
              "(pip install -e '.[dev]')", file=sys.stderr)  # fmt: skip
        return 2
    return stack_main(argv)


if __name__ == "__main__":
    sys.exit(main())
