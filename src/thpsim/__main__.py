"""``python -m thpsim``: the same as the ``thpsim`` command (the lab's guests run it this way)."""

import sys

from thpsim.cli import main

sys.exit(main())
