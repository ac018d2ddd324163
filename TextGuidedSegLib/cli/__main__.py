"""``python -m TextGuidedSegLib.cli``: the ``textguidedseg`` command."""

import sys

from TextGuidedSegLib.cli import main

sys.exit(main())
