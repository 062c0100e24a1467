"""dpo.py's pairs: ranking the model's own samples with a stub reward, the two training
samples of a pair against the conversation template written out by hand, and the loss on
a worked example."""

import math
import types

import pytest
import torch

import dpo
import tasks
from clap import pad_ids
from model import ASSISTANT, AUDIO, BOS, EOS, INTERVAL, N_SPECIAL, N_STREAMS, TEXT, USER, UALM, UALMConfig
from sequences import FRAME, NO_LOSS, TOKEN

CFG = UALMConfig(text_size=100, audio_dim=0, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                           num_hidden_layers=1, num_attention_heads=4,
                                                           num_key_value_heads=2, rope_theta=10000.0))


class Tok:
    vocab_size = 100

    def encode(self, s):
        return [ord(c) % 100 for c in s]


def clip(level, T):
    """Codes (8, T) whose every code is `level`: the stub codec decodes them to a wave of that level."""
    return torch.full((N_STREAMS, T), level, dtype=torch.long)


class StubCodec:
    def decode(self, codes):  # (1, 8, T) -> (1, 320 T): the codes' mean level, as a wave
        return codes.float().mean().expand(1, 320 * codes.shape[-1]).clone()


class StubClap:
    """Reward = the wave's level / 1000: known for each clip. Records the texts it scored."""

    def __init__(self):
        self.texts = []

    def score(self, waves, ids):
        self.texts.append(ids)
        return torch.stack([w.mean() / 1000 for w in waves])


def test_pairs_are_the_best_and_worst_audible_samples(tmp_path, monkeypatch):
    """Three captions, 4 samples each, drawn by a stub that also records how it was asked
    (the model's own distribution: no CFG, temperature 1, no top-k, a duration + 1 s cap).
    A 1-frame clip (20 ms) is too short to hear and drops out, even with the best reward; a
    caption left with one audible clip gives no pair; dpo_prompts caps the captions. The
    winner is the argmax and the loser the argmin of the reward, the gap their difference;
    the pairs are cached in out/dpo_pairs.pt and read back without sampling again."""
    samples = {  # caption -> the clips the model "samples"
        "a bell": [clip(300, 5), clip(900, 1), clip(100, 3), clip(500, 2)],  # 900 is 1 frame: inaudible
        "a drum": [clip(200, 1), clip(700, 4), clip(50, 1), clip(10, 1)],  # one audible clip: no pair
        "a hum": [clip(40, 6), clip(20, 2), clip(600, 3), clip(400, 9)],
        "a hiss": [clip(1, 5)] * 4,  # past dpo_prompts: never sampled
    }
    asked = []

    def stub_generate(model, rows, feats=None, n=1, cfg_scale=3.0, temperature=0.8, top_k=20, max_frames=500,
                      generator=None):
        tokens = [t - N_SPECIAL for t in rows[:, 0].tolist() if t >= N_SPECIAL]
        caption = next(c for c in samples if tokens == Tok().encode(tasks.TTA_PROMPT + c))
        asked.append((caption, rows[-2:, 0].tolist(), n, cfg_scale, temperature, top_k, max_frames, generator))
        return [c.short() for c in samples[caption]]  # the cache stores int16 codes

    monkeypatch.setattr(dpo, "generate_audio", stub_generate)
    rows = [{"caption": c, "duration": d} for c, d in zip(samples, (2.0, 1.5, 3.04, 1.0))]
    args = types.SimpleNamespace(out=str(tmp_path), seed=0, dpo_prompts=3, dpo_samples=4, dpo_reward="clap")
    torch.manual_seed(0)
    policy, clap = UALM(CFG), StubClap()
    pairs = dpo.dpo_pairs(args, policy, Tok(), rows, StubCodec(), clap)

    assert [a[0] for a in asked] == ["a bell", "a drum", "a hum"]
    for (caption, last, n, cfg_scale, temperature, top_k, max_frames, g), row in zip(asked, rows):
        assert last == [ASSISTANT, AUDIO] and n == 4 and (cfg_scale, temperature, top_k) == (1.0, 1.0, None)
        assert max_frames == int(row["duration"] * 50) + 50 and isinstance(g, torch.Generator)
    assert [p[0] for p in pairs] == ["a bell", "a hum"]
    (_, win, lose, gap), (_, win2, lose2, gap2) = pairs
    assert torch.equal(win, clip(500, 2)) and torch.equal(lose, clip(100, 3)) and win.dtype == torch.long
    assert torch.equal(win2, clip(600, 3)) and torch.equal(lose2, clip(20, 2))
    assert gap == pytest.approx(0.4) and gap2 == pytest.approx(0.58)
    assert len(clap.texts) == 2  # the drum's one audible clip is never scored
    for ids, (caption, n_audible) in zip(clap.texts, [("a bell", 3), ("a hum", 4)]):
        assert torch.equal(ids, pad_ids([Tok().encode(caption)] * n_audible, Tok.vocab_size))

    asked.clear()
    again = dpo.dpo_pairs(args, policy, Tok(), rows, StubCodec(), StubClap())  # from out/dpo_pairs.pt
    assert not asked and len(again) == 2
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and a[3] == b[3] for a, b in zip(again, pairs))


def test_pair_samples_against_the_template_by_hand():
    """Each sample of a pair: <|bos|>, the user's request (<|user|> <|text|> its tokens
    shifted by 256 <|eos|>, no loss), then <|assistant|> <|audio|> (tokens with loss), the
    clip's 8 codebooks under the delay pattern (T + 7 frame rows: codebook k holds frame s - k
    at row s, else its pad, id audio_offset + 1025 k + code + 1), and <|eos|>."""
    caption = "a low hum"
    g = torch.Generator().manual_seed(0)
    win, lose = torch.randint(0, 1024, (8, 4), generator=g), torch.randint(0, 1024, (8, 6), generator=g)
    samples = dpo.pair_samples(caption, win, lose, Tok(), CFG)
    request = [BOS, USER, TEXT] + [t + N_SPECIAL for t in Tok().encode(tasks.TTA_PROMPT + caption)] + [EOS]
    for s, codes in zip(samples, (win, lose)):
        T = codes.shape[1]
        ids = [[t] + [0] * 7 for t in request] + [[ASSISTANT] + [0] * 7, [AUDIO] + [0] * 7]
        for row in range(T + 7):
            ids.append([CFG.audio_offset + INTERVAL * k + (int(codes[k, row - k]) + 1 if 0 <= row - k < T else 0)
                        for k in range(N_STREAMS)])
        ids.append([EOS] + [0] * 7)
        kinds = [NO_LOSS] * len(request) + [TOKEN, TOKEN] + [FRAME] * (T + 7) + [TOKEN]
        assert s.ids.tolist() == ids
        assert s.kind.tolist() == kinds and s.feats is None
    assert torch.equal(samples[0].ids[:len(request) + 2], samples[1].ids[:len(request) + 2])  # the same prompt


def test_dpo_loss_worked_example():
    """pi = (-10, -12), ref = (-11, -11): margin (1) - (-1) = 2, loss -log sigmoid(0.1 x 2) = log(1 + e^-0.2)."""
    loss, margin = dpo.dpo_loss(torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -11.0]), 0.1)
    assert float(margin) == 2.0
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-0.2)), rel=1e-6)


def test_analyzer_reward_ranks_by_adherence_then_clap(tmp_path, monkeypatch):
    """--dpo_reward analyzer: each clip's reward is its adherence score to the row's events
    (the analyzer stubbed: a wave's level says what it 'hears') plus CLAP / 1000, so adherence
    decides and CLAP only orders equals; the pairs go to dpo_pairs_analyzer.pt."""
    hears = {300: [{"keyword": "hum", "onset": 0.1, "offset": 1.9, "pitch": "low", "f0": 120.0}],  # right
             500: [{"keyword": "bell", "onset": 0.1, "offset": 1.9, "pitch": "low", "f0": 420.0}],  # wrong event
             100: [{"keyword": "hum", "onset": 0.1, "offset": 1.9, "pitch": "high", "f0": 190.0}]}  # wrong pitch
    monkeypatch.setattr(dpo, "analyze", lambda wav: hears[int(round(float(wav.mean())))])
    truth = [{"keyword": "hum", "onset": 0.1, "offset": 1.9, "pitch": "low", "f0": 130.0}]
    samples = [clip(500, 4), clip(300, 4), clip(100, 4)]
    monkeypatch.setattr(dpo, "generate_audio", lambda *a, **k: [c.short() for c in samples])
    rows = [{"caption": "a low hum", "duration": 2.0, "events": truth}]
    args = types.SimpleNamespace(out=str(tmp_path), seed=0, dpo_prompts=1, dpo_samples=3, dpo_reward="analyzer")
    torch.manual_seed(0)
    [(caption, win, lose, gap)] = dpo.dpo_pairs(args, UALM(CFG), Tok(), rows, StubCodec(), StubClap())
    # adherence (events, layout, counts, pitch): hum low 1.0; bell 0.25 (counts only); hum high 0.75
    assert torch.equal(win, clip(300, 4)) and torch.equal(lose, clip(500, 4))  # CLAP alone would pick 500
    assert gap == pytest.approx((1.0 + 0.3e-3) - (0.25 + 0.5e-3))
    assert (tmp_path / "dpo_pairs_analyzer.pt").is_file() and not (tmp_path / "dpo_pairs.pt").exists()
    (tmp_path / "dpo_pairs_analyzer.pt").unlink()
    rows[0].pop("events")
    with pytest.raises(ValueError, match="ground truth"):
        dpo.dpo_pairs(args, UALM(CFG), Tok(), rows, StubCodec(), StubClap())
