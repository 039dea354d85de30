import sys

from handeye.cli import main

sys.exit(main())
