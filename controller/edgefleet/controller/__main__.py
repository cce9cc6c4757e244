"""``python -m edgefleet.controller`` = ``edge-controller``."""

from edgefleet.controller.cli import main

main()
