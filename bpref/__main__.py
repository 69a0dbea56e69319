import sys

from bpref.cli import main

sys.exit(main())
