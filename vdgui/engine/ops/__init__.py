"""Operations on containers: copy/convert, and (as they land) merge, compact,
resize, discard, repair.  Each takes a ``progress`` (``vdgui.engine.Progress``)
that reports and can cancel."""
