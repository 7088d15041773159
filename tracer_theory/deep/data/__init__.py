"""The data: MNIST (shipped subset or the user's files), ColoredMNIST, and the captions and
prompts of the CLIPs."""
