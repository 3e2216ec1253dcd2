"""Make Doubleword's `dw` CLI runnable for the fidelity tests, or record why it cannot be.

Run after installing requirements-dev.txt: `python tests/prepare_dw_cli.py`. Idempotent and fast
once prepared. Writes `.dwtools/dw` (a wrapper the tests call) or `.dwtools/SKIP_REASON`.
Exit 0 when dw is ready, 1 when its tests will skip (the reason is printed).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dwcli import prepare_or_record_skip  # noqa: E402


def main() -> int:
    ready, message = prepare_or_record_skip()
    print(message if ready else f"SKIP: {message}", file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
