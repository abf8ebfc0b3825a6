from __future__ import annotations

import sys


def main() -> int:
    print(f"{sys.argv[0]}: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
