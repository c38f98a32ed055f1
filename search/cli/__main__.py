"""``python -m search.cli``: the same as the ``cnnsearch`` console script."""

import sys

from search.cli.main import main

sys.exit(main())
