"""CLIP's tokenizer: byte-level BPE over CLIP's 49,408-token vocabulary (Radford et al. 2021).

``clip_tokenizer()`` reads the BPE merges shipped with the package (``clip_assets/``, OpenAI's
MIT-licensed ``bpe_simple_vocab_16e6.txt.gz``; its notice is beside it) and builds the BPE with
the ``tokenizers`` library; ``clip_tokenizer(path)`` reads a checkpoint's ``tokenizer.json``
instead. Texts are cleaned as CLIP cleans them (``ftfy.fix_text``, HTML entities unescaped twice,
whitespace collapsed, lower-cased), split by CLIP's pattern, byte-encoded and merged; each row is
start-of-text, the ids, end-of-text, zero-padded to ``context`` (truncated with end-of-text
kept last).
"""

from __future__ import annotations

import dataclasses
import gzip
import html
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from ...errors import InputError
from .prompts import END_OF_TEXT as WORD_END_OF_TEXT, MAX_TOKENS, VOCAB

#: CLIP's start- and end-of-text ids and its text context.
START_OF_TEXT, END_OF_TEXT, CONTEXT = 49406, 49407, 77
#: CLIP's split of cleaned text into words (contractions, letter runs, single digits, other runs).
PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
           r"|[^\s\p{L}\p{N}]+")
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def clean(text: str) -> str:
    """CLIP's text cleaning: ``ftfy.fix_text``, HTML entities unescaped (twice), whitespace
    collapsed to single spaces and stripped, lower-cased."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def byte_alphabet() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 bytes to printable unicode characters: the
    printable Latin-1 bytes map to themselves, the others to ``chr(256 + i)`` in byte order;
    ordered as CLIP orders its base vocabulary (the printable bytes first)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(others)}


@lru_cache(maxsize=1)
def _shipped() -> Tokenizer:
    """The BPE of the shipped merges: the 256 byte characters, the same with ``</w>``, the
    48,894 merges in rank order, then start- and end-of-text (ids 49406, 49407)."""
    data = resources.files(__package__) / "clip_assets" / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(data.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    alphabet = list(byte_alphabet().values())
    tokens = [*alphabet, *(a + "</w>" for a in alphabet), *("".join(m) for m in merges),
              *_SPECIAL]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                     end_of_word_suffix="</w>", continuing_subword_prefix="")
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.add_special_tokens(list(_SPECIAL))
    return tokenizer


@lru_cache(maxsize=1)
def _words() -> Tokenizer:
    """The word-level tokenizer of this toolkit's own CLIPs: ``prompts.VOCAB`` (pad is id 0)
    and end-of-text as the largest id, words split at whitespace, no start-of-text."""
    vocab = {w: i for i, w in enumerate(VOCAB)} | {_SPECIAL[1]: WORD_END_OF_TEXT}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([_SPECIAL[1]])
    return tokenizer


@dataclasses.dataclass(frozen=True)
class ClipTokenizer:
    """A callable from texts to CLIP token ids ``(N, context)`` int32 (see the module);
    ``start`` is ``None`` for a vocabulary without start-of-text (this toolkit's own words)."""

    tokenizer: Tokenizer
    context: int = CONTEXT
    start: int | None = START_OF_TEXT
    end: int = END_OF_TEXT

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Ids of ``texts`` (a list of strings): shape (N, context), int32."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a list of strings, got {texts!r:.80}")
        out = np.zeros((len(texts), self.context), np.int32)
        cleaned = [clean(t) for t in texts]
        try:
            encoded = self.tokenizer.encode_batch(cleaned, add_special_tokens=False)
        except Exception as err:  # the library's own errors (e.g. a word outside a vocabulary)
            unknown = sorted({w for t in cleaned for w in t.split()
                              if self.tokenizer.token_to_id(w) is None})
            raise ValueError(f"texts cannot be tokenized ({str(err)[:120]})"
                             + (f"; words outside the vocabulary: {unknown[:20]}"
                                if unknown else "")) from None
        first = [] if self.start is None else [self.start]
        for row, enc in zip(out, encoded, strict=True):
            ids = [*[*first, *enc.ids][: self.context - 1], self.end]
            row[: len(ids)] = ids
        return out

    def to_json(self) -> str:
        """The ``tokenizer.json`` of this tokenizer (its ``context`` as the padding length,
        which ``clip_tokenizer(path)`` reads back)."""
        copy = Tokenizer.from_str(self.tokenizer.to_str())
        copy.enable_padding(length=self.context, pad_id=0,
                            pad_token=copy.id_to_token(0) or "<pad>")
        return copy.to_str()


def clip_tokenizer(path: str | Path | None = None, *, context: int | None = None
                   ) -> ClipTokenizer:
    """CLIP's tokenizer (``ClipTokenizer``): the shipped BPE, or a checkpoint's ``tokenizer.json``
    (``path``: the file or the folder holding it) with its end-of-text token and its
    start-of-text token if it has one; ``context`` ids per text (≥ 2; default: the file's
    padding length if it sets one, else 77)."""
    if context is not None and (isinstance(context, bool) or
                                not isinstance(context, int | np.integer) or context < 2):
        raise ValueError(f"context must be an integer >= 2 (start and end of text), "
                         f"got {context!r}")
    if path is None:
        return ClipTokenizer(_shipped(), int(context or CONTEXT))
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise InputError(f"no tokenizer file at {file} (give a tokenizer.json or the folder "
                         "holding it)")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as err:  # the library's own parse errors
        raise InputError(f"{file} is not a tokenizer.json the tokenizers library reads: "
                         f"{str(err)[:200]}") from None
    start, end = (tokenizer.token_to_id(t) for t in _SPECIAL)
    if end is None:
        raise InputError(f"{file} has no {_SPECIAL[1]} token")
    padding = (tokenizer.padding or {}).get("length")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return ClipTokenizer(tokenizer, int(context or padding or CONTEXT), start, end)


def word_tokenizer() -> ClipTokenizer:
    """The tokenizer of this toolkit's own CLIPs (``prompts.VOCAB``; no start-of-text,
    end-of-text as the largest id): the ids ``clip.clip_tokens`` gives, context
    ``MAX_TOKENS + 1``."""
    return ClipTokenizer(_words(), MAX_TOKENS + 1, None, WORD_END_OF_TEXT)


def tokenizer_for_vocabulary(vocab_size: int, context: int) -> ClipTokenizer | None:
    """The tokenizer of a CLIP whose text tower has ``vocab_size`` ids and ``context``
    positions: CLIP's BPE (49,408 ids), this toolkit's words (``len(VOCAB) + 1`` ids), else
    ``None`` (unknown)."""
    known = {END_OF_TEXT + 1: lambda: clip_tokenizer(context=context),
             WORD_END_OF_TEXT + 1: lambda: dataclasses.replace(word_tokenizer(),
                                                               context=context)}
    return known[vocab_size]() if vocab_size in known else None


__all__ = ["CONTEXT", "END_OF_TEXT", "PATTERN", "START_OF_TEXT", "ClipTokenizer",
           "byte_alphabet", "clean", "clip_tokenizer", "tokenizer_for_vocabulary",
           "word_tokenizer"]
