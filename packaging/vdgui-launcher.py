"""Entry script of the bundle's ``vdgui`` program (the desktop application)."""

from vdgui.gui.app import main

raise SystemExit(main())
