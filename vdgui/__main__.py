"""``python -m vdgui``: start the desktop application."""

from vdgui.gui.app import main

raise SystemExit(main())
