"""``python -m tarsier.cli``: the same as the ``tarsier`` command."""

import sys

from tarsier.cli import main

sys.exit(main())
