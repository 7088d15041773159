"""Deep experiments: the toy CNN CLIP and a transformer CLIP on MNIST → ColoredMNIST.

``models/`` the CLIPs, ``data/`` MNIST, ColoredMNIST and prompts, ``finetune/`` strategies as
values, the jitted step, the loop, pretraining and checkpoints, ``studies/`` the experiments.
"""
