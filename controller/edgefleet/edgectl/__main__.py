"""``python -m edgefleet.edgectl``: the same CLI as the ``edgectl`` console script."""

from edgefleet.edgectl.app import main

main()
