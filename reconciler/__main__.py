"""``python -m reconciler`` is the same as the ``fwrecon`` command."""

from .cli import main

raise SystemExit(main())
