import sys

from edgefold.cli import main

sys.exit(main())
