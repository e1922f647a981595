"""Deprecated module path: :mod:`pyro_vae.analysis.evaluate` holds this now.

Names imported from here still work, with a DeprecationWarning naming the new path.
"""

from pyro_vae._moved import moved_module

__getattr__, __dir__ = moved_module(__name__, "pyro_vae.analysis.evaluate")
