"""Training: a pair trained by SVI into a run directory (setup, the loop, validation,
checkpoints, resume), and ``fit``, the same on the objects a user holds.
"""
