"""`python -m starlabel.cli`."""

from . import main

main()
