"""`python -m tessera.cli`: the entry the `tessera` command runs, which answers Ctrl-C and SIGTERM
from the first instant and then imports the CLI to run it."""

from tessera.entry import main

raise SystemExit(main())
