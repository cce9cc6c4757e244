"""``python -m edgefleet.agent run ...``: the same as the ``edge-agent`` console script."""

from edgefleet.agent.cli import main

main()
