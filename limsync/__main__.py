"""``python -m limsync``: the same as the ``limsync`` command."""

from limsync.cli.main import main

main()
