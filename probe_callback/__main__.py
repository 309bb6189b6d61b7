"""`python -m probe_callback` runs the `probe-callback` command line."""

from probe_callback.cli import main

raise SystemExit(main())
