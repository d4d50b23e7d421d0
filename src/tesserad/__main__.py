import sys

from tesserad.cli import main

sys.exit(main())
