import sys

from tlserve.cli import main

sys.exit(main())
