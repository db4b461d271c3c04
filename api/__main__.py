"""``python -m leveret``: the `leveret` command."""

from leveret.services.cli import main

main()
