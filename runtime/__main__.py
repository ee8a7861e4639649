"""`python -m dx`: the same CLI as the `dx` console script (tests start the server this way)."""

from dx.cli import main

main()
