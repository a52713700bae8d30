"""``vdimg``: the command line of the vdgui engine (see /work/shared/spec/cli.md).

:mod:`.main` builds the parser and maps failures to exit codes; each subcommand
lives in :mod:`.commands`; :mod:`.output` formats human and JSON output;
:mod:`.progress` draws progress bars and turns Ctrl-C into a clean cancellation.
"""
