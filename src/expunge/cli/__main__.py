"""``python -m expunge.cli``."""

from expunge.cli import main

main()
