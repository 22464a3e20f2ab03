"""Run the rsvision command line from a checkout: ``python cli.py train recipes/quickstart.yaml``."""

from rsvision.cli import main

main()
