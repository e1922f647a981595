"""``python -m pyro_vae.cli`` runs the ``pyro-vae`` command line, as ``python -m pyro_vae`` does."""

import sys

from pyro_vae.cli import main

sys.exit(main())
