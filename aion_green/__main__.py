import sys

from aion_green.cli import main

sys.exit(main())
