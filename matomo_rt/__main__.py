"""`python -m matomo_rt` runs the same CLI as the `matomo-rt` script."""

import sys

from matomo_rt.cli import main

sys.exit(main())
