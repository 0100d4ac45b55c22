"""``python -m clipedu ...`` is the ``clipedu`` command (also under torchrun)."""

import sys

from clipedu.cli import main

sys.exit(main())
