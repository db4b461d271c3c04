"""`python -m services` runs the `leveret` command."""

from services.cli import main

main()
