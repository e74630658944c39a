"""``python -m mimirlite``: see :mod:`mimirlite.cli`."""

from mimirlite.cli import main

raise SystemExit(main())
