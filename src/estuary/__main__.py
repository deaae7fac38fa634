"""`python -m estuary` is the `estuary` command."""

from estuary.cli import main

main()
