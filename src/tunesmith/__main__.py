"""`python -m tunesmith` is the same as the `tunesmith` command."""

from tunesmith.cli import main

main()
