"""``python -m adasched.workflow STAGE LOG CONFIG_JSON OPTIONS_JSON``: a workflow stage in a process of its own."""

import sys

from adasched.workflow.run import main

sys.exit(main())
