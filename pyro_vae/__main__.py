"""``python -m pyro_vae`` runs the ``pyro-vae`` command line."""

import sys

from pyro_vae.cli import main

sys.exit(main())
