"""``python -m controlplane [args]`` is ``tidedesk controlplane [args]``."""

import sys

from controlplane.daemon import main

sys.exit(main(sys.argv[1:]))
