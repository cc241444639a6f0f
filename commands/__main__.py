"""`python -m edgehydra.commands ARGS` (what torchrun launches for distributed train/qat)."""
from edgehydra.commands import main

main()
