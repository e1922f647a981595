"""Inference: the SVI objectives, gradient estimators and baselines, importance-sampling
estimators of log p(x), Pyro handlers, the compiled step, optimizers and the ranks of a
distributed run. Functions of a pair and tensors; nothing here reads or writes a run.
"""
