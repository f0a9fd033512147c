"""``python -m keepmix`` (also what ``torchrun -m keepmix train ...`` runs)."""

import sys

from keepmix.cli import main

sys.exit(main())
