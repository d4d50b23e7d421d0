"""`python -m tessera`: the `tessera` command."""

import sys

from tessera.entry import main

sys.exit(main())
