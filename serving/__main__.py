"""`python -m serving --model DIR ...`: the server alone, as `researcher serve` runs it."""

import sys

from serving.cli import main

sys.exit(main())
