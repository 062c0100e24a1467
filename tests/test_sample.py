"""sample.py's CFG decoding through the KV cache, checked against full forwards without a cache."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sample
from sequences import delay_pattern
from model import ASSISTANT, AUDIO, EOS, EOT, INTERVAL, N_SPECIAL, N_STREAMS, TEXT, UALM, UALMConfig
from sample import generate_audio, prefix

CFG = UALMConfig(text_size=100, audio_dim=16, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, rope_theta=10000.0,
                                                            max_position_embeddings=512))


class Tok:
    def encode(self, s):
        return [ord(c) % 100 for c in s]


@pytest.mark.parametrize("compiled", [False, True])
def test_cfg_greedy_decoding_equals_full_forward(compiled):
    """Greedy (temperature 0): every free cell of the delayed grid must be the argmax of
    g * cond + (1 - g) * uncond, where cond sees the prompt and uncond an all-pad prefix,
    both recomputed here from scratch on the finished grid with no cache; codebook 0's pad
    (the end) is cond's argmax alone, and never the guided one's. Also with the frame step
    under torch.compile, as `sample.py --compile` runs it."""
    step = torch.compile(sample.decode_step) if compiled else None
    torch.manual_seed(0)
    model = UALM(CFG).eval()
    with torch.no_grad():
        model.stream_emb.normal_()
    rows, _ = prefix([{"role": "user", "text": "a bell rings"}], Tok(), CFG, AUDIO)
    g, T_max = 3.0, 6
    codes = generate_audio(model, rows, n=2, cfg_scale=g, temperature=0.0, max_frames=T_max, step=step)
    L = rows.shape[0]
    for c in codes:
        T = c.shape[1]
        assert c.shape[0] == N_STREAMS and 0 < T <= T_max and c.min() >= 0
        grid = CFG.audio_ids(delay_pattern(c[None])[0]).T  # (T + 7, 8)
        seq = torch.cat([rows, grid])[None]
        with torch.no_grad():
            cond = model.audio_logits(model(seq))[0]
            uncond = model.audio_logits(model(torch.cat([torch.zeros_like(rows), grid])[None]))[0]
        guided = g * cond + (1 - g) * uncond  # (L + T + 7, 8, 1025)
        for s in range(T + N_STREAMS - 1):
            logits = guided[L - 1 + s].clone()
            logits[:, 0] = float("-inf")  # no pad inside a codebook's span; the end is cond's
            for k in range(N_STREAMS):
                if s < k or s >= T + k:  # the delay pattern's empty cells are forced to pad
                    assert grid[s, k] == CFG.audio_offset + 1025 * k
                    continue
                if k == 0:  # frame s was written: the conditional branch did not end the clip here
                    assert int(cond[L - 1 + s, 0].argmax()) != 0, s
                want = int(logits[k].argmax())
                assert int(grid[s, k]) - CFG.audio_offset - 1025 * k == want, (s, k)
        if T < T_max:  # it stopped by itself: the conditional branch chose codebook 0's pad after T frames
            assert int(cond[L - 1 + T, 0].argmax()) == 0


@pytest.mark.parametrize("argv, says", [
    (["--prompt", " "], "--prompt is empty"),
    (["--prompt", "a bell", "--ckpt", "no/such.pt"], "no such checkpoint"),
    (["--prompts_file", "no/such.txt"], "cannot read it"),
    (["--prompts_file", __file__, "--prompt", "a bell"], "drop --prompt"),
    (["--prompts_file", "binary.txt"], "not UTF-8 text"),
    (["--prompt", "a bell", "--best_of", "0"], "--best_of 0: give 1 or more"),
    (["--prompt", "a bell", "--text", "--best_of", "2"], "--best_of ranks clips"),
])
def test_cli_bad_input_is_one_clear_error(argv, says, tmp_path):
    """Bad input ends in one sentence on stderr naming the fix, exit status 1, no traceback."""
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "sample.py"), *argv, "--out", str(tmp_path / "o.wav")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.wav").exists()


# ---------------------------------------------------------------------------------------------- sampling, early stop

COUNTER = UALMConfig(text_size=100, audio_dim=0, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=1, num_attention_heads=4,
                                                               num_key_value_heads=2, rope_theta=10000.0,
                                                               max_position_embeddings=512))


def counting_model(rows, stop_at, nats):
    """A one-layer UALM whose codebook 0 pad logit counts the frames written so far.

    Its embedding's dimension 0 is -3 on text and special rows and +3 on audio rows (8 of
    them summed in a frame); q and k are zero, so attention averages over every position
    so far, and v / o copy the normed dimension 0 into dimension 1: a counter of
    (frames - prefix rows) / positions that rises with each frame. The audio head reads
    dimension 1 only in the row of codebook 0's pad, scaled and shifted, measured on a
    teacher-forced path, so that its logit, relative to codebook 0's other codes, is
    -nats after stop_at - 1 frames and +nats after stop_at."""
    torch.manual_seed(0)
    model = UALM(COUNTER).eval()
    off = COUNTER.audio_offset
    E, A, H = model.lm.model.embed_tokens.weight, model.audio_embed.weight, model.audio_head.weight
    attn = model.lm.model.layers[0].self_attn
    with torch.no_grad():
        for W, sign in ((E, -1), (A, 1), (H, 1)):
            W[:, :2] = 0
            W[:, 0] = 3.0 * sign
        for p in (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight,
                  attn.v_proj.bias, attn.o_proj.weight, model.lm.model.layers[0].mlp.down_proj.weight):
            p.zero_()
        attn.v_proj.weight[0, 0] = 1.0  # kv head 0, channel 0 <- dimension 0
        attn.o_proj.weight[1, 0] = 1.0  # head 0, channel 0 -> dimension 1
        seq, h = rows.clone(), []
        for s in range(stop_at + 1):  # any codes: the counter reads only how many frames there are
            h.append(model(seq[None])[0, -1, :2])
            seq = torch.cat([seq, (off + INTERVAL * torch.arange(N_STREAMS) + 1)[None]])
        h1 = torch.stack(h)[:, 1]
        scale = 2 * nats / (h1[stop_at] - h1[stop_at - 1])
        H[0, 1] = scale
        H[0, 0] += -scale * (h1[stop_at] + h1[stop_at - 1]) / 2 / h[stop_at][0]
    return model


def reference_sampling(model, rows, n, temperature, top_k, max_frames, generator):
    """generate_audio's contract with cfg_scale 1, written out with a full forward (no KV
    cache) over the whole grid at every step. Step s draws one row of the delayed grid for
    each of the n clips: codebook k holds frame s - k of the clip when 0 <= s - k < T, else
    its pad; inside that span codebooks 1..7 may not draw their pad; codebook 0 drawing its
    pad at step s < max_frames ends the clip at T = s frames. Each draw: the logits over the
    temperature, their top_k (all 1025 without), softmax, one multinomial over the n x 8
    rows from `generator`. The loop ends with the last row of the longest clip."""
    off = model.cfg.audio_offset
    pads = off + INTERVAL * torch.arange(N_STREAMS)  # each codebook's pad id
    grid, T, drawn, s = rows[None].repeat(n, 1, 1), [max_frames] * n, [], 0
    while True:
        with torch.no_grad():
            logits = model.audio_logits(model(grid)[:, -1]).float() / temperature  # (n, 8, 1025)
        active = torch.tensor([[0 <= s - k < T[i] for k in range(N_STREAMS)] for i in range(n)])
        logits[:, 1:, 0] = torch.where(active[:, 1:], float("-inf"), logits[:, 1:, 0])
        values, ids = logits.topk(top_k, -1) if top_k else (logits, torch.arange(INTERVAL).expand_as(logits))
        pick = torch.multinomial(values.softmax(-1).view(n * N_STREAMS, -1), 1, generator=generator)
        idx = torch.where(active, ids.gather(-1, pick.view(n, N_STREAMS, 1))[..., 0], 0)
        for i in range(n):
            if T[i] == max_frames and s < max_frames and idx[i, 0] == 0:
                T[i] = s
        drawn.append(idx)
        if s == max(T) + N_STREAMS - 2:
            break
        grid = torch.cat([grid, (pads + idx)[:, None]], 1)
        s += 1
    steps = torch.stack(drawn, -1)  # (n, 8, steps)
    return [torch.stack([steps[i, k, k:k + T[i]] - 1 for k in range(N_STREAMS)]) for i in range(n)]


@pytest.mark.parametrize("temperature, top_k, nats, n", [(0.9, 50, 30.0, 3), (1.0, None, 2.0, 4)])
def test_sampling_without_cfg_stops_where_a_full_forward_sampler_does(temperature, top_k, nats, n):
    """Top-k / full-vocabulary sampling, cfg_scale 1 (no unconditional branch), and the stop:
    with a pad 30 nats clear of the rest the clips must all end after exactly 5 frames; with
    2 nats a step the stop is a draw and the 4 clips end at different frames. Either way the
    codes equal, draw for draw from the same seed, what the full-forward sampler gives."""
    rows, _ = prefix([{"role": "user", "text": "a bell rings"}], Tok(), COUNTER, AUDIO)
    model = counting_model(rows, stop_at=5, nats=nats)
    codes = generate_audio(model, rows, n=n, cfg_scale=1.0, temperature=temperature, top_k=top_k, max_frames=12,
                           generator=torch.Generator().manual_seed(0))
    want = reference_sampling(model, rows, n, temperature, top_k, 12, torch.Generator().manual_seed(0))
    lengths = [c.shape[1] for c in codes]
    assert lengths == [w.shape[1] for w in want]
    for c, w in zip(codes, want):
        assert c.shape[0] == N_STREAMS and c.min() >= 0 and c.max() < 1024
        assert torch.equal(c, w)
    if nats > 10:
        assert lengths == [5] * n
    else:
        assert len(set(lengths)) > 1 and max(lengths) < 12, lengths



def test_with_cfg_the_conditional_branch_alone_ends_the_clip():
    """With guidance the end is drawn from the conditional logits, not the guided ones. The
    counting model's unconditional twin, whose all-pad prompt embeds to zero, counts higher
    than the prompted branch, so g * cond + (1 - g) * uncond puts codebook 0's pad below the
    rest after 5 frames (checked on a full forward), where cond puts it 30 nats above: the
    clips must still end after exactly 5 frames, as without guidance."""
    rows, _ = prefix([{"role": "user", "text": "a bell rings"}], Tok(), COUNTER, AUDIO)
    model = counting_model(rows, stop_at=5, nats=30.0)
    g = 3.0
    codes = generate_audio(model, rows, n=3, cfg_scale=g, temperature=0.9, top_k=50, max_frames=12,
                           generator=torch.Generator().manual_seed(0))
    assert [c.shape[1] for c in codes] == [5, 5, 5]
    grid = COUNTER.audio_ids(delay_pattern(codes[0][None])[0]).T[:5]  # the rows before the end
    with torch.no_grad():
        cond = model.audio_logits(model(torch.cat([rows, grid])[None]))[0, -1, 0]
        uncond = model.audio_logits(model(torch.cat([torch.zeros_like(rows), grid])[None]))[0, -1, 0]
    guided = g * cond + (1 - g) * uncond
    assert cond[0] > cond[1:].max() + 20 and guided[0] < guided[1:].max()  # cond ends here, guidance would not

# ---------------------------------------------------------------------------------------------- sample.py end to end


def run_main(monkeypatch, capsys, *argv):
    """sample.py's main() in this process, as `python sample.py ARGV` would run it: -> its stdout."""
    monkeypatch.setattr(sys, "argv", ["sample.py", *map(str, argv)])
    sample.main()
    return capsys.readouterr().out


def wavs(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".wav")


def test_cli_writes_the_files_it_promises(tiny_run, tmp_path, monkeypatch, capsys):
    """On a tiny trained run: one caption -> --out itself, 48 kHz stereo (the VAE) or with
    --no_vae 16 kHz mono, the same seed giving the same clip, so the stereo file is the VAE
    (loaded here) of the mono one; --prompts_file -> out_0.wav, out_1.wav (blank lines
    skipped); --num_samples 2 -> out_0.wav, out_1.wav; both -> out_0_0.wav ... out_1_1.wav.
    Every clip is whole 20 ms frames, at most --max_seconds long, its peak at most 0.99."""
    import soundfile as sf
    from vae import EnhanceVAE
    ckpt = tiny_run / "runs" / "gen.pt"
    common = ["--ckpt", ckpt, "--max_seconds", 0.4, "--seed", 3]
    (tmp_path / "captions.txt").write_text("a bell rings\n\na low hum\n")
    cases = {  # folder: (extra arguments, the files they must write)
        "mono": (["--prompt", "a bell rings", "--no_vae"], ["one.wav"]),
        "stereo": (["--prompt", "a bell rings"], ["one.wav"]),
        "file": (["--prompts_file", tmp_path / "captions.txt", "--no_vae"], ["one_0.wav", "one_1.wav"]),
        "samples": (["--prompt", "a bell rings", "--num_samples", 2, "--no_vae"], ["one_0.wav", "one_1.wav"]),
        "both": (["--prompts_file", tmp_path / "captions.txt", "--num_samples", 2, "--no_vae"],
                 ["one_0_0.wav", "one_0_1.wav", "one_1_0.wav", "one_1_1.wav"]),
    }
    for name, (extra, files) in cases.items():
        (tmp_path / name).mkdir()
        out = run_main(monkeypatch, capsys, *common, *extra, "--out", tmp_path / name / "one.wav")
        assert wavs(tmp_path / name) == files, name
        assert [line.split()[1] for line in out.splitlines()] == [str(tmp_path / name / f) for f in files]
        for f in files:
            info = sf.info(str(tmp_path / name / f))
            rate, channels, hop = (48000, 2, 960) if name == "stereo" else (16000, 1, 320)
            assert (info.samplerate, info.channels) == (rate, channels), (name, f)
            assert info.frames % hop == 0 and 0 < info.frames <= 0.4 * rate
            assert np.abs(sf.read(str(tmp_path / name / f))[0]).max() <= 0.99 + 2 ** -15  # never clips
        if name == "file":  # each line names its caption
            assert [line.endswith(c) for line, c in zip(out.splitlines(), ("a bell rings", "a low hum"))] == [True] * 2
    mono, _ = sf.read(str(tmp_path / "mono" / "one.wav"), dtype="float32")
    stereo, _ = sf.read(str(tmp_path / "stereo" / "one.wav"), dtype="float32")  # (3N, 2)
    assert stereo.shape == (3 * len(mono), 2)
    assert np.abs(mono).max() < 0.99, "this seed's clip is loud enough to be peak-normalised: pick another"
    vae = EnhanceVAE.from_checkpoint(tiny_run / "runs" / "vae.pt")
    with torch.no_grad():
        want = vae(torch.from_numpy(mono)[None])[0].T.numpy()
    want *= min(1.0, 0.99 / np.abs(want).max())  # louder than 0.99: scaled down as a whole
    assert np.abs(stereo - want).max() < 2e-3  # the mono file went through 16-bit PCM on its way here


def test_clap_order_worked_example():
    """Five clips scored 0.2, (too short to hear), 0.9, -0.1, 0.5 by a stub CLAP -> best first
    2, 4, 0, 3, then the unheard clip 1; the CLAP sees each heard clip's decoded waveform with
    the prompt's tokens."""
    class Codec:
        def decode(self, codes):  # a clip of T frames -> a waveform whose first sample is T
            return torch.full((1, 320 * codes.shape[-1]), float(codes.shape[-1]))

    class Clap:
        def score(self, waves, ids):
            self.seen = ([int(w[0]) for w in waves], ids)
            return torch.tensor([{3: 0.2, 5: 0.9, 6: -0.1, 7: 0.5}[int(w[0])] for w in waves])

    rt = sample.Runtime(model=None, tok=type("T", (), {"encode": lambda self, s: [1, 2], "vocab_size": 9})(),
                        codec=Codec(), ears=None, clap=Clap(), vae=None, device="cpu")
    clips = [torch.zeros(8, t, dtype=torch.long) for t in (3, 1, 5, 6, 7)]  # 1 frame is 20 ms: not audible
    assert sample.clap_order(rt, "a bell", clips) == [2, 4, 0, 3, 1]
    assert rt.clap.seen[0] == [3, 5, 6, 7] and rt.clap.seen[1].tolist() == [[1, 2]] * 4


def test_cli_best_of_keeps_the_clip_the_clap_hears_closest(tiny_run, tmp_path, monkeypatch, capsys):
    """--best_of 4 draws what --num_samples 4 draws from the same seed and writes the one of
    them that the run's CLAP (clap.pt, loaded here) scores highest against the prompt."""
    import soundfile as sf
    from clap import Clap, pad_ids
    from tokenizer import load_tokenizer
    common = ["--ckpt", tiny_run / "runs" / "gen.pt", "--max_seconds", 0.4, "--seed", 5, "--no_vae",
              "--prompt", "a bell rings"]
    run_main(monkeypatch, capsys, *common, "--num_samples", 4, "--out", tmp_path / "all.wav")
    run_main(monkeypatch, capsys, *common, "--best_of", 4, "--out", tmp_path / "best.wav")
    drawn = [sf.read(str(tmp_path / f"all_{i}.wav"), dtype="float32")[0] for i in range(4)]
    best = sf.read(str(tmp_path / "best.wav"), dtype="float32")[0]
    clap, tok = Clap.from_checkpoint(tiny_run / "runs" / "clap.pt"), load_tokenizer(tiny_run / "runs" / "tokenizer")
    heard = [i for i, w in enumerate(drawn) if len(w) >= 480]
    scores = clap.score([torch.from_numpy(drawn[i]) for i in heard],
                        pad_ids([tok.encode("a bell rings")] * len(heard), tok.vocab_size))
    want = drawn[heard[int(scores.argmax())]]
    assert len(heard) > 1 and best.shape == want.shape and np.abs(best - want).max() == 0


def test_cli_writes_past_the_context_in_windows(tiny_run, tmp_path, monkeypatch, capsys):
    """--max_seconds past the context (cut here to 96 positions, so a window holds about a
    second) is written in windows, says so, and the file is the requested length: whole
    frames, 2 s, from the same seed the same file. The seams are checked code by code in
    test_generate.py."""
    import soundfile as sf
    load = sample.load_runtime

    def short_context(*a, **k):
        rt = load(*a, **k)
        rt.model.lm.cfg.max_position_embeddings = 96
        return rt
    monkeypatch.setattr(sample, "load_runtime", short_context)
    args = ["--ckpt", tiny_run / "runs" / "gen.pt", "--prompt", "a bell rings", "--max_seconds", 2, "--no_vae"]
    out = run_main(monkeypatch, capsys, *args, "--out", tmp_path / "long.wav")
    assert "writing in windows" in out and f"wrote {tmp_path / 'long.wav'} (2.00 s)" in out
    assert sf.info(str(tmp_path / "long.wav")).frames == 2 * 16000
    run_main(monkeypatch, capsys, *args, "--out", tmp_path / "again.wav")
    assert np.array_equal(sf.read(str(tmp_path / "long.wav"))[0], sf.read(str(tmp_path / "again.wav"))[0])


def assert_greedy(model, rows, feats, ids, max_tokens):
    """ids is what greedy decoding after rows writes, checked by one full forward (no KV
    cache) over rows + ids: each id is the argmax of stream 0 over the text and special ids
    at the position before it, and the last is the END it stopped on, <|eos|> or <|eot|>
    (or the cap came first)."""
    seq = torch.cat([rows, torch.tensor([[t] + [0] * (N_STREAMS - 1) for t in ids], dtype=torch.long).view(-1, 8)])
    with torch.no_grad():
        logits = model.text_logits(model(seq[None], feats)[0, rows.shape[0] - 1:])[:, :model.cfg.audio_offset]
    best = logits.argmax(-1).tolist()
    assert best[:len(ids)] == ids
    assert not {EOS, EOT} & set(ids[:-1]) and (ids[-1] in (EOS, EOT) or len(ids) == max_tokens)


def test_cli_answers_in_text(tiny_run, tmp_path, monkeypatch, capsys):
    """--audio (a 48 kHz stereo wav: resampled and downmixed) with a question, and --text:
    the printed answer is the tokenizer's decode of the greedy answer to the conversation
    written out here (the question, the clip's encoder frames, <|assistant|> <|text|>),
    checked to be greedy by a full forward; no audio file is written. Answers are cut at 24
    tokens, not sample.TEXT_TOKENS (200), to keep the test short: a 2-step model rarely stops."""
    import soundfile as sf
    from data import load_audio
    from sequences import build
    monkeypatch.setattr(sample, "TEXT_TOKENS", 24)
    rt = sample.load_runtime(str(tiny_run / "runs" / "gen.pt"), need_vae=False)
    wav = str(sorted((tiny_run / "toy" / "audio48k").iterdir())[-1])  # a held-out clip's master
    assert (sf.info(wav).samplerate, sf.info(wav).channels) == (48000, 2)
    question = "How many drum hits are there?"
    for extra, heard in ((["--audio", wav], True), (["--text"], False)):
        out = run_main(monkeypatch, capsys, "--ckpt", tiny_run / "runs" / "gen.pt", *extra, "--prompt", question,
                       "--out", tmp_path / "a.wav")
        messages = [{"role": "user", "text": question}]
        if heard:
            with torch.no_grad():
                feats, _ = rt.ears.listen([torch.from_numpy(load_audio(wav))])
            messages.append({"role": "user", "feats": feats[0]})
        s = build(messages, rt.tok.encode, rt.model.cfg)
        rows = torch.cat([s.ids, torch.tensor([[ASSISTANT] + [0] * 7, [TEXT] + [0] * 7])])
        assert (s.feats is not None) == heard
        ids = sample.generate_text(rt.model, rows, s.feats, max_tokens=24)
        assert_greedy(rt.model, rows, s.feats, ids, max_tokens=24)
        assert out == rt.tok.decode([i - N_SPECIAL for i in ids if i >= N_SPECIAL]) + "\n"
        assert not (tmp_path / "a.wav").exists()


def test_cli_samples_in_bf16(tiny_run, tmp_path, monkeypatch, capsys):
    """--dtype bf16: the LM's weights and KV cache in bf16 (its logits read in fp32) write a
    finite clip, and its first frame's logits follow fp32's to bf16's precision."""
    import soundfile as sf
    ckpt = tiny_run / "runs" / "gen.pt"
    run_main(monkeypatch, capsys, "--ckpt", ckpt, "--prompt", "a bell rings", "--no_vae", "--max_seconds", 0.4,
             "--dtype", "bf16", "--out", tmp_path / "half.wav")
    wav, rate = sf.read(str(tmp_path / "half.wav"))
    assert rate == 16000 and len(wav) and np.isfinite(wav).all()
    full, half = (sample.load_runtime(str(ckpt), need_vae=False, dtype=d) for d in (None, torch.bfloat16))
    assert half.model.lm.lm_head.weight.dtype == torch.bfloat16
    x, _ = sample.prefix([{"role": "user", "text": "a bell rings"}], full.tok, full.model.cfg, AUDIO)
    with torch.no_grad():
        want, got = (rt.model.audio_logits(rt.model(x[None])[:, -1]).float() for rt in (full, half))
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)
