"""sample.generate_audio beyond one prompt: a batch of prompts of other lengths gives each
prompt what it gets alone, and continuing a clip from its own first frames gives it back."""

import pytest
import torch

from model import AUDIO, UALM, UALMConfig
from sample import generate_audio, prefix

CFG = UALMConfig(text_size=100, audio_dim=16, backbone=dict(vocab_size=1, hidden_size=64, intermediate_size=128,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, rope_theta=10000.0,
                                                            max_position_embeddings=1024))


class Tok:
    def encode(self, s):
        return [ord(c) % 100 for c in s]


@pytest.fixture(scope="module")
def model():
    """A random tiny UALM: greedy clips run to max_frames."""
    torch.manual_seed(0)
    m = UALM(CFG).eval()
    with torch.no_grad():
        m.stream_emb.normal_()
    return m


@pytest.fixture(scope="module")
def stopping_model():
    """The same with codebook 0's pad row of the head set so that greedy clips end by
    themselves at lengths that differ from prompt to prompt (0, 5 and 6 frames, or none before max_frames)."""
    torch.manual_seed(0)
    m = UALM(CFG).eval()
    with torch.no_grad():
        m.stream_emb.normal_()
        m.lm.lm_head.weight[CFG.audio_offset] = 0.1 * torch.randn(64, generator=torch.Generator().manual_seed(2))
    return m


def rows_of(text):
    return prefix([{"role": "user", "text": text}], Tok(), CFG, AUDIO)[0]


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_a_batch_of_prompts_equals_each_alone(stopping_model, cfg_scale):
    """Greedy, so each row's codes are determined by its own prompt: three prompts of three
    lengths, two samples each, in one batch against one call per prompt."""
    prompts = [rows_of(t) for t in ("a bell", "a low drum, then a high beep twice", "hiss")]  # see stopping_model
    assert len({len(p) for p in prompts}) == 3
    model = stopping_model
    batch = generate_audio(model, prompts, n=2, cfg_scale=cfg_scale, temperature=0.0, max_frames=30)
    alone = [c for p in prompts for c in generate_audio(model, p, n=2, cfg_scale=cfg_scale, temperature=0.0,
                                                        max_frames=30)]
    assert [c.shape[1] for c in batch] == [c.shape[1] for c in alone]
    assert len({c.shape[1] for c in alone}) > 1  # rows really stopped on their own, at other lengths
    for b, a in zip(batch, alone):
        assert torch.equal(b, a)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_continuing_a_greedy_clip_from_its_first_frames_gives_it_back(model, cfg_scale):
    """The continued frames are laid under the delay pattern as the start of the audio, so the
    model sees exactly the history it had when it wrote them: greedy decoding must write the
    same clip again, and its first frames are the given ones."""
    rows = rows_of("a drum hits twice")
    whole = generate_audio(model, rows, cfg_scale=cfg_scale, temperature=0.0, max_frames=40)[0]
    T = whole.shape[1]
    assert T > 12
    for T0 in (1, 5, T // 2):
        again = generate_audio(model, rows, cfg_scale=cfg_scale, temperature=0.0, max_frames=40,
                               prompt_codes=whole[:, :T0])[0]
        assert torch.equal(again[:, :T0], whole[:, :T0])
        assert torch.equal(again, whole), T0


def test_continuation_keeps_its_frames_while_sampling(model):
    prompt = torch.randint(0, 1024, (8, 7), generator=torch.Generator().manual_seed(3))
    out = generate_audio(model, [rows_of("a bell"), rows_of("two beeps")], n=2, temperature=1.0, top_k=50,
                         max_frames=40, prompt_codes=prompt, generator=torch.Generator().manual_seed(4))
    assert len(out) == 4
    for c in out:
        assert c.shape[1] >= 7 and torch.equal(c[:, :7], prompt)
    with pytest.raises(ValueError, match="leaves no room"):
        generate_audio(model, rows_of("a bell"), max_frames=7, prompt_codes=prompt)
