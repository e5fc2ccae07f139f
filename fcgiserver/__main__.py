"""``python -m fcgiserver``: the same as the ``fcgiserver`` command."""

from fcgiserver.cli import main

raise SystemExit(main())
