"""``python -m vwarper_hooks.cli``: the same as the ``vwarper`` console script."""

import sys

from . import main

sys.exit(main())
