"""A local helper package, imported by ``vae_with_package.py`` as ``utils.custom_mlp``."""
