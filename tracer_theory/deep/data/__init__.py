"""The data: MNIST (shipped subset or the user's files), ColoredMNIST, the captions and prompts
of the CLIPs, and CLIP's own byte-level BPE tokenizer (``clip_tokenizer``)."""

from .tokenizer import ClipTokenizer as ClipTokenizer, clip_tokenizer as clip_tokenizer
