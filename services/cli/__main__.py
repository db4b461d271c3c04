"""``python -m services.cli``: the `leveret` command."""

from services.cli import main

main()
