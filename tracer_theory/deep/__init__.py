"""Deep experiments: the toy CLIP on MNIST → ColoredMNIST."""
