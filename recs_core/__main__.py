"""``python -m recs_core`` is the ``recs`` command."""

from recs_core.cli import main

raise SystemExit(main())
