"""`python -m services` runs the `leveret` command."""

from leveret.services.cli import main

main()
