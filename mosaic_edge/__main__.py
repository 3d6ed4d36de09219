"""``python -m mosaic_edge`` (used by ``torchrun -m mosaic_edge train ...``)."""

from mosaic_edge.cli import main

main()
