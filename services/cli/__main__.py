"""``python -m leveret.services.cli``: the `leveret` command."""

from leveret.services.cli import main

main()
