"""The vdgui desktop application (PySide6).

Entry point: :func:`vdgui.gui.app.main`.  The GUI talks to disk images only through
:mod:`vdgui.engine` and :mod:`vdgui.library`, and runs every engine call that can
take longer than a few milliseconds on a worker thread (:mod:`vdgui.gui.jobs`).
"""
