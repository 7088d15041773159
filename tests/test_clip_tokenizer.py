"""CLIP's tokenizer against known ids and an independent reference: CLIP's published algorithm
(clean, split, byte-encode, merge the lowest-ranked pair until none applies) written here as a
plain Python merge loop over the shipped merges, with the split done character by character."""

import gzip
import html
import itertools
import json
import re
import unicodedata
from importlib import resources

import ftfy
import numpy as np
import pytest

from tracer_theory.deep.data import clip_tokenizer
from tracer_theory.errors import InputError

CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _split(text: str) -> list[str]:
    """CLIP's pattern, by unicode category: contractions, letter runs, single digits, runs of
    anything else that is not whitespace."""
    out, i = [], 0
    kind = lambda c: ("space" if c.isspace() else unicodedata.category(c)[0])  # noqa: E731
    while i < len(text):
        c = text[i]
        found = next((s for s in CONTRACTIONS if text.startswith(s, i)), None)
        if found:
            out.append(found)
            i += len(found)
        elif kind(c) == "space":
            i += 1
        elif kind(c) in ("L", "N"):
            j = i + 1
            while kind(c) == "L" and j < len(text) and kind(text[j]) == "L":
                j += 1
            out.append(text[i:j])
            i = j
        else:
            j = i + 1
            while (j < len(text) and kind(text[j]) not in ("L", "N", "space")
                   and not any(text.startswith(s, j) for s in CONTRACTIONS)):
                j += 1
            out.append(text[i:j])
            i = j
    return out


class Reference:
    """CLIP's SimpleTokenizer, from its description."""

    def __init__(self):
        data = resources.files("tracer_theory.deep.data") / "clip_assets" / \
            "bpe_simple_vocab_16e6.txt.gz"
        lines = gzip.decompress(data.read_bytes()).decode().split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in lines]
        printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
        order = printable + [b for b in range(256) if b not in printable]
        chars = [chr(b) for b in printable] + [chr(256 + k) for k in range(256 - len(printable))]
        self.byte = dict(zip(order, chars, strict=True))
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.rank = {m: i for i, m in enumerate(merges)}

    def bpe(self, token: str) -> list[str]:
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(self.rank.get(p, 1e12), k) for k, p in enumerate(itertools.pairwise(word))]
            best, k = min(pairs)
            if best == 1e12:
                break
            first, second = word[k], word[k + 1]
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the pair, left to right
                if i < len(word) - 1 and (word[i], word[i + 1]) == (first, second):
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def __call__(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in _split(text):
            encoded = "".join(self.byte[b] for b in token.encode("utf-8"))
            ids += [self.ids[t] for t in self.bpe(encoded)]
        return [49406, *ids, 49407]


TEXTS = ["a photo of a seven", "A photo of a SEVEN.", "the digit 7, written by hand!",
         "it's a dog's life; they're here, we've done it, I'm sure we'll, he'd",
         "naïve café résumé — déjà vu", "数字 七", "emoji 🙂 and symbols ©®™ ∑∫",
         "  lots\tof\n\nwhitespace  ", "1234567890 3.14159 -42 +7e10",
         "&amp; &lt;b&gt; html &quot;entities&quot;", "fish &amp;amp; chips", "mojibake: cafÃ©", "",
         "a photo of a {}.", "ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ"]


@pytest.fixture(scope="module")
def tokenize():
    return clip_tokenizer()


def test_known_ids(tokenize):
    ids = tokenize(["a photo of a seven"])
    assert ids.shape == (1, 77) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[0, :7], [49406, 320, 1125, 539, 320, 5757, 49407])
    assert not ids[0, 7:].any()


def test_every_text_equals_the_reference_merge_loop(tokenize):
    reference = Reference()
    got = tokenize(TEXTS)
    for text, row in zip(TEXTS, got, strict=True):
        want = reference(text)
        np.testing.assert_array_equal(row[:len(want)], want, err_msg=repr(text))
        assert not row[len(want):].any(), repr(text)


def test_long_texts_are_truncated_with_end_of_text_last(tokenize):
    text = " ".join(["seven"] * 200)
    ids = clip_tokenizer(context=10)([text, "seven"])
    np.testing.assert_array_equal(ids[0], [49406, *[5757] * 8, 49407])
    np.testing.assert_array_equal(ids[1], [49406, 5757, 49407, *[0] * 7])
    assert tokenize([text])[0, -1] == 49407


def test_a_tokenizer_json_is_read_back(tokenize, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenize.tokenizer.save(str(path))
    again = clip_tokenizer(tmp_path)
    np.testing.assert_array_equal(again(TEXTS), tokenize(TEXTS))


@pytest.mark.parametrize(("texts", "message"), [
    ("a photo", "texts must be a list of strings"), ([1, 2], "texts must be a list of strings"),
    (["ok", None], "texts must be a list of strings")])
def test_bad_texts_are_named(tokenize, texts, message):
    with pytest.raises(ValueError, match=message):
        tokenize(texts)


def test_bad_tokenizer_files_and_context_are_named(tmp_path):
    for context in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="context must be an integer >= 2"):
            clip_tokenizer(context=context)
    with pytest.raises(InputError, match=r"no tokenizer file at .*tokenizer\.json"):
        clip_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match=r"is not a tokenizer\.json"):
        clip_tokenizer(tmp_path)
    plain = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
             "normalizer": None, "pre_tokenizer": None, "post_processor": None,
             "decoder": None, "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1},
                                        "unk_token": "[UNK]"}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(plain))
    with pytest.raises(InputError, match=r"tokenizer\.json has no <\|endoftext\|> token"):
        clip_tokenizer(tmp_path / "tokenizer.json")
