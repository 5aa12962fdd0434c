"""``python -m sparseflash``: the same command as ``sparseflash`` (see :mod:`sparseflash.cli`)."""

from .cli import main

raise SystemExit(main())
