"""Allow ``python -m moe_tui``."""

from moe_tui.cli import main

raise SystemExit(main())
