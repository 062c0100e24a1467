"""sample.generate_audio beyond one prompt: a batch of prompts of other lengths gives each
prompt what it gets alone, continuing a clip from its own first frames gives it back, and
clips longer than the context are written in windows whose seams carry every code over."""

import dataclasses

import pytest
import torch

import sample
from model import AUDIO, N_STREAMS, UALM, UALMConfig
from sample import generate_audio, generate_windows, prefix, window_room

CFG = UALMConfig(text_size=100, audio_dim=16, backbone=dict(vocab_size=1, hidden_size=64, intermediate_size=128,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, rope_theta=10000.0,
                                                            max_position_embeddings=1024),
                 tie_audio=False)  # untied: the stopping models set a head row alone


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
    themselves at lengths that differ from prompt to prompt (greedy, max_frames 30: 8, 6 and 8 frames without CFG)."""
    torch.manual_seed(0)
    m = UALM(CFG).eval()
    with torch.no_grad():
        m.stream_emb.normal_()
        m.audio_head.weight[0] = 0.05 * torch.randn(64, generator=torch.Generator().manual_seed(6))
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


# ---------------------------------------------------------------------------------------------- past the context

SHORT = dataclasses.replace(CFG, backbone={**CFG.backbone, "max_position_embeddings": 64})


def short_model(stopping=False):
    """The same tiny UALMs (the same seed gives the same weights) with a context of 64 positions:
    after rows_of("a drum hits"), 17 rows, a window holds 64 - 17 - 8 = 39 frames."""
    torch.manual_seed(0)
    m = UALM(SHORT).eval()
    with torch.no_grad():
        m.stream_emb.normal_()
        if stopping:
            m.audio_head.weight[0] = 0.05 * torch.randn(64, generator=torch.Generator().manual_seed(6))
    return m


class Spy:
    """Wraps sample.generate_audio (the real one) and records every window: (prompt rows,
    the codes it started from, its max_frames, the clips it returned)."""

    def __init__(self, monkeypatch):
        self.calls, self.real = [], sample.generate_audio
        monkeypatch.setattr(sample, "generate_audio", self)

    def __call__(self, model, rows, feats=None, n=1, max_frames=500, prompt_codes=None, **kw):
        out = self.real(model, rows, feats, n, max_frames=max_frames, prompt_codes=prompt_codes, **kw)
        self.calls.append((rows, prompt_codes, max_frames, out))
        return out


def assert_seams(clip, first, later, keep, max_frames):
    """clip (8, T) is its windows stitched: `first` (8, t) gives its first frames; each later
    window, taken in turn from the iterator `later` of (rows, start, size, [out (8, t')]),
    started from the keep frames before it (the seam), gave them back first, and its other
    frames come next in the clip. The clip ends at max_frames or where a window ended by itself."""
    t, size = first.shape[1], None
    assert torch.equal(clip[:, :t], first)
    while t < clip.shape[1]:
        _, start, size, (out,) = next(later)  # later windows write one clip each
        assert torch.equal(start, clip[:, t - keep:t])  # the seam: the previous windows' frames exactly
        assert torch.equal(out[:, :keep], start)
        new = out.shape[1] - keep
        assert torch.equal(clip[:, t:t + new], out[:, keep:])
        t += new
    assert t == clip.shape[1]
    assert t == max_frames or (out.shape[1] < size if size else True)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_past_the_context_windows_carry_every_seam_code(monkeypatch, cfg_scale):
    """120 frames after a prompt whose context holds 39: the first window writes the three
    samples at once, then each sample goes on alone, each window keeping half the room (19
    frames) of what came before. No window passes the context, the seams are exact, and a
    clip is the requested length unless a window ended it by itself."""
    model, rows = short_model(), rows_of("a drum hits")
    room = window_room(model, rows)
    assert room == 64 - len(rows) - N_STREAMS == 39
    spy = Spy(monkeypatch)
    clips = generate_windows(model, rows, n=3, cfg_scale=cfg_scale, temperature=1.0, top_k=20, max_frames=120,
                             generator=torch.Generator().manual_seed(0))
    first, later = spy.calls[0], iter(spy.calls[1:])
    assert first[1] is None and first[2] == room and len(first[3]) == 3
    assert all(len(r) + size + N_STREAMS <= 64 for r, _, size, _ in spy.calls)  # every window fits the context
    for i, clip in enumerate(clips):
        assert_seams(clip, first[3][i], later, room // 2, 120)
    assert next(later, None) is None
    assert 120 in [c.shape[1] for c in clips] and len(spy.calls) > 4
    assert not torch.equal(clips[0][:, :room], clips[1][:, :room])


def test_windows_start_from_the_continued_clip_and_stop_where_a_window_ends(monkeypatch):
    """A clip to continue longer than the seam: the first window starts from its last frames,
    and the result begins with the whole clip and runs (greedy, this model does not stop) to
    max_frames. With the stopping model's pad, clips whose first window ends by itself get no
    further window, and the one that goes on ends where a later window ends by itself."""
    model, rows = short_model(), rows_of("a drum hits")
    room, start = window_room(model, rows), torch.randint(0, 1024, (8, 30), generator=torch.Generator().manual_seed(5))
    keep = room // 2
    spy = Spy(monkeypatch)
    clip, = generate_windows(model, rows, temperature=0.0, max_frames=100, prompt_codes=start)
    assert clip.shape[1] == 100 and torch.equal(clip[:, :30], start)
    assert torch.equal(spy.calls[0][1], start[:, -keep:])
    assert_seams(clip, start, iter(spy.calls), keep, 100)  # the given clip, then every window continues

    stopping = short_model(stopping=True)
    prompts = [rows_of(t) for t in ("a bell", "a low drum, then a high beep twice", "hiss")]
    room = window_room(stopping, prompts)  # 16 frames after the longest prompt
    alone = [generate_audio(stopping, p, temperature=0.0, max_frames=room)[0].shape[1] for p in prompts]
    spy.calls.clear()
    clips = generate_windows(stopping, prompts, temperature=0.0, max_frames=150)
    lengths = [c.shape[1] for c in clips]
    assert [n for n in alone if n < room] == [n for n in lengths if n < room] == [14, 10]  # ended in the first window
    assert room < lengths[1] < 150  # a later window ended by itself
    first, later = spy.calls[0], iter(spy.calls[1:])
    for i, clip in enumerate(clips):
        assert_seams(clip, first[3][i], later, room // 2, 150)
    assert next(later, None) is None


def test_a_prompt_that_leaves_no_room_for_windows_is_refused():
    model = short_model()
    with pytest.raises(ValueError, match="leaves 0 frame\\(s\\) of the context"):
        generate_windows(model, rows_of("x" * 60), max_frames=10)
