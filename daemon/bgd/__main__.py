import sys

from bgd.main import main

sys.exit(main())
