"""``python -m hmrnn`` is the ``hmrnn`` command."""

import sys

from .cli import main

sys.exit(main())
