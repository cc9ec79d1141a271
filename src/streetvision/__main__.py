import sys

from streetvision.cli import main

sys.exit(main())
