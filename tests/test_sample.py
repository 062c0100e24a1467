"""sample.py's CFG decoding through the KV cache, checked against full forwards without a cache."""

import os
import subprocess
import sys

import pytest
import torch

import sample
from sequences import delay_pattern
from model import AUDIO, N_STREAMS, UALM, UALMConfig
from sample import generate_audio, prefix

CFG = UALMConfig(text_size=100, audio_dim=16, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, rope_theta=10000.0,
                                                            max_position_embeddings=512))


class Tok:
    def encode(self, s):
        return [ord(c) % 100 for c in s]


@pytest.mark.parametrize("compiled", [False, True])
def test_cfg_greedy_decoding_equals_full_forward(compiled, monkeypatch):
    """Greedy (temperature 0): every free cell of the delayed grid must be the argmax of
    g * cond + (1 - g) * uncond, where cond sees the prompt and uncond an all-pad prefix,
    both recomputed here from scratch on the finished grid with no cache. Also with the
    frame step under torch.compile, as `sample.py --compile` runs it."""
    if compiled:
        monkeypatch.setattr(sample, "decode_step", torch.compile(sample.decode_step))
    torch.manual_seed(0)
    model = UALM(CFG).eval()
    with torch.no_grad():
        model.stream_emb.normal_()
    rows, _ = prefix([{"role": "user", "text": "a bell rings"}], Tok(), CFG, AUDIO)
    g, T_max = 3.0, 6
    codes = generate_audio(model, rows, n=2, cfg_scale=g, temperature=0.0, max_frames=T_max)
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
            for k in range(N_STREAMS):
                if s < k or s >= T + k:  # the delay pattern's empty cells are forced to pad
                    assert grid[s, k] == CFG.audio_offset + 1025 * k
                    continue
                if k > 0:
                    logits[k, 0] = float("-inf")  # no pad inside a codebook's span
                want = int(logits[k].argmax())
                assert int(grid[s, k]) - CFG.audio_offset - 1025 * k == want, (s, k)
        if T < T_max:  # it stopped by itself: codebook 0 chose its pad after T frames
            assert int(guided[L - 1 + T, 0].argmax()) == 0


@pytest.mark.parametrize("argv, says", [
    (["--prompt", " "], "--prompt is empty"),
    (["--prompt", "a bell", "--ckpt", "no/such.pt"], "no such checkpoint"),
    (["--prompts_file", "no/such.txt"], "cannot read it"),
    (["--prompts_file", __file__, "--prompt", "a bell"], "drop --prompt"),
    (["--prompts_file", "binary.txt"], "not UTF-8 text"),
])
def test_cli_bad_input_is_one_clear_error(argv, says, tmp_path):
    """Bad input ends in one sentence on stderr naming the fix, exit status 1, no traceback."""
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "sample.py"), *argv, "--out", str(tmp_path / "o.wav")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.wav").exists()
