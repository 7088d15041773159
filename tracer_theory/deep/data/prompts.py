"""Captions and prompts of the toy CLIP: a fixed word vocabulary, templates, tokenization.

Training templates are the five of the original toy (THEORY §6); the held-out templates never
appear in pretraining or finetuning and give the out-of-distribution prompts of the 2×2 view.
"""

from __future__ import annotations

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = ("the digit {d}", "number {d}", "handwritten {d}", "a {d} digit",
                   "the number {d} written by hand")
HELD_OUT_TEMPLATES = ("a photo of a {d}", "an image showing {d}", "this is {d}")
MAX_TOKENS = 8
PAD = 0


def _words() -> tuple[str, ...]:
    words = set(DIGIT_WORDS)
    for template in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES:
        words.update(w for w in template.split() if w != "{d}")
    return ("<pad>", *sorted(words))


VOCAB: tuple[str, ...] = _words()
#: End-of-text id of the CLIPs' text (``clip.EOT``): one past the last word, the largest id.
END_OF_TEXT = len(VOCAB)
_INDEX = {w: i for i, w in enumerate(VOCAB)}


def tokenize(text: str) -> np.ndarray:
    """Word ids of ``text`` padded with 0 to ``MAX_TOKENS``; shape (MAX_TOKENS,) int32."""
    words = text.split()
    unknown = [w for w in words if w not in _INDEX]
    if unknown:
        raise ValueError(f"text {text!r} has words outside the vocabulary: {unknown}")
    if len(words) > MAX_TOKENS:
        raise ValueError(f"text {text!r} has {len(words)} words, more than {MAX_TOKENS}")
    ids = np.zeros(MAX_TOKENS, np.int32)
    ids[: len(words)] = [_INDEX[w] for w in words]
    return ids


def prompt_tokens(templates: tuple[str, ...]) -> np.ndarray:
    """Tokens of every template for every digit; shape (10, len(templates), MAX_TOKENS)."""
    return np.stack([np.stack([tokenize(t.format(d=word)) for t in templates])
                     for word in DIGIT_WORDS])
