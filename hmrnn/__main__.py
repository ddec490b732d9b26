"""``python -m hmrnn`` is the ``hmrnn`` command."""

import sys

from hmrnn.cli import main

sys.exit(main())
