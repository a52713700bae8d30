"""``python -m vdgui.cli``: the same as the ``vdimg`` console script."""

import sys

from .main import main

sys.exit(main())
