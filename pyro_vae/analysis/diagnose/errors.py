"""The error of a diagnosis that cannot run as asked."""


class DiagnoseError(ValueError):
    """Diagnostics that cannot run as asked; the message names the flag or the site."""
