"""
The text tokenizers of UALM's text interval (Qwen2.5's, as UALM is initialised from
Qwen2.5; SPEC.md sections 1 and 10). Two kinds, one interface (`encode`, `decode`,
`vocab_size`):

- QwenTokenizer: Qwen2.5's byte-level BPE, written from scratch (stdlib only) and
  checked id for id against the `tokenizers` library. Encoding a string is
    1. split out special tokens such as <|im_start|>, matched literally;
    2. NFC-normalise the rest and pre-split it with Qwen's regex into "words";
    3. write each word's UTF-8 bytes as printable characters (GPT-2's byte map);
    4. merge adjacent symbols by rank (merges.txt) and look the results up in vocab.json.
  "Hello world" -> ["Hello", " world"] -> ["Hello", "Ġworld"] -> [9707, 1879].
- SPTokenizer: a SentencePiece BPE model trained on our own text, for the small
  models trained from scratch.

The LM keeps its own 256 special ids and shifts text ids by +256 (SPEC section 1), so
neither tokenizer needs a pad, bos or eos of its own.
"""

import heapq
import io
import json
import os
import re
import sys
import unicodedata
from functools import lru_cache
from itertools import groupby

import sentencepiece as spm

from utils import atomic_path

# Qwen2.5's added tokens (tokenizer_config.json, added_tokens_decoder), ids 151643.. in
# order. Used when a folder has no tokenizer_config.json.
QWEN_SPECIALS = {tok: 151643 + i for i, tok in enumerate([
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
])}

# Unicode White_Space: what \s means in the reference regex engine (Oniguruma). It is
# not Python's str.isspace(), which adds the separators U+001C..U+001F.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

BPE_CACHE_SIZE = 100_000  # words whose ids are remembered (cleared when full): bounds memory, keeps common words


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable bytes map to themselves, the rest to chr(256 + n), so no token holds a
    space or a control character. e.g. bytes_to_unicode()[ord(" ")] == "Ġ" (U+0120).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


BYTE_TO_CHAR = bytes_to_unicode()
# BYTE_TO_CHAR doubles as a str.translate table for latin-1 text (one char per byte);
# this one goes back
CHAR_TO_BYTE = {ord(c): b for b, c in BYTE_TO_CHAR.items()}


def category_ranges() -> dict[str, str]:
    """Code point ranges of each major Unicode category (first letter), for `re` classes.

    e.g. category_ranges()["N"].startswith(r"\\U00000030-\\U00000039")  (the digits 0-9)
    """
    runs: dict[str, list[str]] = {}
    codepoints = range(sys.maxunicode + 1)
    for major, run in groupby(codepoints, key=lambda cp: unicodedata.category(chr(cp))[0]):
        run = list(run)
        runs.setdefault(major, []).append(f"\\U{run[0]:08x}-\\U{run[-1]:08x}")
    return {major: "".join(r) for major, r in runs.items()}


@lru_cache(maxsize=None)
def qwen_pre_split() -> re.Pattern:
    """Qwen2.5's pre-tokenizer regex, rewritten for Python's `re`, which has no \\p{..}.

    The reference pattern is
      (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*
      |\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
    with \\p{L} (letters) and \\p{N} (numbers) spelled out from unicodedata categories and
    \\s as WHITESPACE. Both engines backtrack and take the first alternative that
    matches, so the same pattern splits the same way (built once and cached: the category
    scan over every code point is slow).
    e.g. qwen_pre_split().findall("I'M  here\\n\\n 42") == ["I", "'M", " ", " here", "\\n\\n", " ", "4", "2"]
    """
    ranges = category_ranges()
    L, N, S = ranges["L"], ranges["N"], WHITESPACE
    return re.compile(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)"  # contractions, any case: "DON'T" -> "DON", "'T"
        f"|[^\\r\\n{L}{N}]?[{L}]+"  # a word with at most one leading non-letter: " world"
        f"|[{N}]"  # one digit at a time: "2024" -> "2", "0", "2", "4"
        f"| ?[^{S}{L}{N}]+[\\r\\n]*"  # punctuation, with one leading space and trailing newlines
        f"|[{S}]*[\\r\\n]+"  # whitespace up to and including the last newline
        f"|[{S}]+(?![^{S}])"  # whitespace, leaving its last char to prefix the next word
        f"|[{S}]+"  # any other whitespace
    )


def bpe(symbols: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge adjacent symbols, always the pair of lowest rank, leftmost first, until no pair has a rank.

    Candidate pairs wait in a heap and the parts form a linked list, so a word of n
    symbols costs O(n log n), as in the reference (a rescan after every merge is O(n^2)
    on a long run of CJK text). e.g. bpe("Ġworld", ranks) == ["Ġworld"]; bpe("ab", {}) == ["a", "b"]
    """
    parts = list(symbols)  # a part becomes "" once merged into its left neighbour
    end = len(parts)
    before, after = list(range(-1, end - 1)), list(range(1, end + 1))  # live neighbours
    heap = [(ranks[pair], i, pair) for i, pair in enumerate(zip(parts, parts[1:])) if pair in ranks]
    heapq.heapify(heap)
    while heap:
        _, i, pair = heapq.heappop(heap)
        j = after[i]
        if j == end or (parts[i], parts[j]) != pair:
            continue  # stale: one of the two has been merged since this entry was pushed
        parts[i], parts[j] = parts[i] + parts[j], ""
        after[i] = after[j]
        if after[i] != end:
            before[after[i]] = i
        for left, right in ((before[i], i), (i, after[i])):  # the two pairs the merge made
            if left != -1 and right != end and (parts[left], parts[right]) in ranks:
                new_pair = (parts[left], parts[right])
                heapq.heappush(heap, (ranks[new_pair], left, new_pair))
    return [p for p in parts if p]


def read_json(path: str):
    """Parse a JSON file; a missing or broken file ends in one sentence naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass a Qwen2.5 checkpoint folder "
                                "(it holds vocab.json and merges.txt).")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); copy it again from the checkpoint.") from None


class QwenTokenizer:
    """Qwen2.5's byte-level BPE. e.g. QwenTokenizer.from_pretrained(d).encode("Hello world") == [9707, 1879]"""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], specials: dict[str, int]):
        self.vocab = vocab  # byte-level token -> id
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.specials = specials  # special token text -> id
        self.id_to_token = {i: tok for tok, i in vocab.items()}
        self.id_to_special = {i: tok for tok, i in specials.items()}
        self.vocab_size = max([*vocab.values(), *specials.values()]) + 1
        # longest first, so that a special token that contains another one wins
        alternatives = sorted(specials, key=len, reverse=True)
        self.special_split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self.pre_split = qwen_pre_split()
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def from_pretrained(cls, folder: str) -> "QwenTokenizer":
        """Read vocab.json, merges.txt and, if present, the added tokens of tokenizer_config.json."""
        vocab_path = os.path.join(folder, "vocab.json")
        vocab = read_json(vocab_path)
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise ValueError(f"{vocab_path} must map token strings to integer ids; copy it again.")
        merges = read_merges(os.path.join(folder, "merges.txt"), vocab)
        config_path = os.path.join(folder, "tokenizer_config.json")
        specials = QWEN_SPECIALS
        if os.path.isfile(config_path):
            config = read_json(config_path)
            try:
                added = config.get("added_tokens_decoder", {})
                specials = {tok["content"]: int(i) for i, tok in added.items()} or QWEN_SPECIALS
            except (AttributeError, KeyError, TypeError, ValueError):
                raise ValueError(f"{config_path} has no readable added_tokens_decoder; copy it again "
                                 "or delete it to use the Qwen2.5 special tokens.") from None
        return cls(vocab, merges, specials)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids. e.g. encode("<|im_start|>user") == [151644, 872]"""
        ids = []
        # re.split with one group: even entries are plain text, odd ones special tokens
        for n, chunk in enumerate(self.special_split.split(text)):
            if n % 2:
                ids.append(self.specials[chunk])
                continue
            for word in self.pre_split.findall(unicodedata.normalize("NFC", chunk)):
                ids.extend(self.word_ids(word))
        return ids

    def word_ids(self, word: str) -> list[int]:
        """One pre-split word -> ids, remembered. e.g. word_ids(" world") == [1879]"""
        ids = self.cache.get(word)
        if ids is None:
            symbols = word.encode("utf-8").decode("latin-1").translate(BYTE_TO_CHAR)
            ids = [self.vocab[tok] for tok in bpe(symbols, self.ranks)]
            if len(self.cache) >= BPE_CACHE_SIZE:
                self.cache.clear()
            self.cache[word] = ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text; bytes that are not valid UTF-8 become U+FFFD.

        e.g. decode([9707, 1879]) == "Hello world"; decode([151644, 872]) == "<|im_start|>user"
        """
        text, tokens = [], []  # tokens: byte-level tokens not yet turned into text
        for i in ids:
            if i in self.id_to_special:
                text.append(bytes_to_text(tokens))
                text.append(self.id_to_special[i])
                tokens = []
            elif i in self.id_to_token:
                tokens.append(self.id_to_token[i])
            else:
                raise ValueError(f"token id {i} is not in the vocabulary (ids 0..{self.vocab_size - 1}).")
        text.append(bytes_to_text(tokens))
        return "".join(text)


def bytes_to_text(tokens: list[str]) -> str:
    """Byte-level tokens -> text. e.g. bytes_to_text(["Hello", "Ġworld"]) == "Hello world" """
    data = "".join(tokens).translate(CHAR_TO_BYTE).encode("latin-1")
    return data.decode("utf-8", errors="replace")


def read_merges(path: str, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """merges.txt -> [(left, right), ...] in rank order; each merged token must be in the vocab.

    e.g. the line "Ġ Ġ" -> ("Ġ", "Ġ"), which makes the token "ĠĠ".
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass a Qwen2.5 checkpoint folder "
                                "(it holds vocab.json and merges.txt).")
    merges = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if (n == 1 and line.startswith("#version")) or not line.strip():
                continue
            pair = tuple(line.split())
            if len(pair) != 2 or pair[0] + pair[1] not in vocab:
                raise ValueError(f"{path} line {n} is not a merge of two tokens whose join is in "
                                 f"vocab.json: {line.strip()!r}; copy merges.txt again.")
            merges.append(pair)
    return merges


SP_MODEL = "sentencepiece.model"  # file name of SPTokenizer's model inside its folder


class SPTokenizer:
    """A SentencePiece BPE tokenizer trained on our own text.

    e.g. tok = SPTokenizer.train(texts, "out"); tok.decode(tok.encode("a hum")) == "a hum"
    """

    def __init__(self, model: bytes):
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        self.vocab_size = self.sp.get_piece_size()

    @classmethod
    def train(cls, texts: list[str], folder: str, vocab_size: int = 1024) -> "SPTokenizer":
        """Train on texts (in memory) and save folder/sentencepiece.model.

        Deterministic: one thread and every sentence used, so the same texts give the
        same model. Ids: 0 = <unk> (never produced, thanks to byte fallback), 1..256 the
        raw bytes <0x00>..<0xFF>, then the learned pieces. vocab_size is an upper bound.
        """
        if not any(texts):
            raise ValueError("SPTokenizer.train got no text; pass a non-empty list of strings.")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
            model_type="bpe", hard_vocab_limit=False, byte_fallback=True,
            character_coverage=1.0, split_digits=True,  # digits one by one, as Qwen does
            # keep the text as it is, so that decode(encode(text)) == text
            normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=1, minloglevel=2)
        os.makedirs(folder, exist_ok=True)
        with atomic_path(os.path.join(folder, SP_MODEL)) as tmp, open(tmp, "wb") as f:
            f.write(model.getvalue())
        return cls(model.getvalue())

    @classmethod
    def from_pretrained(cls, folder: str) -> "SPTokenizer":
        """Load folder/sentencepiece.model, as written by train()."""
        path = os.path.join(folder, SP_MODEL)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: train one with SPTokenizer.train(texts, folder).")
        with open(path, "rb") as f:
            model = f.read()
        try:
            return cls(model)
        except RuntimeError as e:
            raise ValueError(f"{path} is not a sentencepiece model ({e}); train it again.") from None

    def encode(self, text: str) -> list[int]:
        """Text -> ids. e.g. "a hum" -> pieces ["a", "▁hum"] -> [347, 287] (ids depend on the training text)"""
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; the inverse of encode. e.g. decode(encode("a hum")) == "a hum" """
        return self.sp.decode(ids)


def load_tokenizer(folder: str) -> QwenTokenizer | SPTokenizer:
    """The tokenizer saved in folder: Qwen2.5's if it has vocab.json, else our SentencePiece model."""
    if os.path.isfile(os.path.join(folder, "vocab.json")):
        return QwenTokenizer.from_pretrained(folder)
    if os.path.isfile(os.path.join(folder, SP_MODEL)):
        return SPTokenizer.from_pretrained(folder)
    raise FileNotFoundError(f"{folder} has neither vocab.json (a Qwen2.5 checkpoint) nor {SP_MODEL}; "
                            "pass a checkpoint folder or train one with SPTokenizer.train(texts, folder).")
