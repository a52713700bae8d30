"""Entry script of the bundle's ``vdimg`` program (the command line)."""

from vdgui.cli.main import main

raise SystemExit(main())
