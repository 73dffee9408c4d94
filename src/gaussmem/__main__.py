"""`python -m gaussmem` is the same as the `gaussmem` console script."""

from gaussmem.cli import main

raise SystemExit(main())
