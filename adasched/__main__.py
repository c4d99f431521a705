import sys

from adasched.cli import main

sys.exit(main())
