"""``python -m retrieval.serve``: the same command as ``retrieval-serve``."""
from ..cli.serve import main

raise SystemExit(main())
