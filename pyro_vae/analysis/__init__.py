"""Analyses of a trained pair, each a function of the objects a user holds (a pair and
tensors) or of a reopened run: evaluate, diagnose, gradient variance, convergence, latent
maps, samples, and their figures. Nothing here trains.
"""
