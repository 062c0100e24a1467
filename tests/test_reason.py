"""reason.py: the model drives the flow, and every prefix it writes from is the training template.

Two kinds of test. Driven: tiny UALMs whose choices (the modality after <|assistant|>, the
END after a segment) are set by their weights, and reason.py must follow them; mirrored
weights give the mirrored flow. Scripted: a stand-in model that writes a training sample's
own segments and ENDs, so that every prefix the chain asks the model to continue can be
checked against the training conversation (tasks.py through sequences.build) cut there.
In both, the world around the model (the codec, the ears, the files) is stubbed."""

import types

import numpy as np
import pytest
import torch

import reason
import tasks
from toy import world
from model import ASSISTANT, AUDIO, AUDIO_IN, EOS, EOT, N_SPECIAL, N_STREAMS, TEXT, UALM, UALMConfig
from sequences import audio_rows
from sequences import build

CFG = UALMConfig(text_size=128, audio_dim=16, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=1, num_attention_heads=4,
                                                            num_key_value_heads=2, max_position_embeddings=2048,
                                                            tie_word_embeddings=False))


class CharTok:
    """One id per ASCII character: lossless, so scripted texts come back exactly."""
    def encode(self, s):
        return [ord(c) for c in s]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


TOK = CharTok()


def feats_of(codes):
    """The stub ears: a fixed function of the clip, (8, T) -> (T // 2, 16)."""
    return torch.cos(codes[:, ::2].T.float()).repeat(1, 2)


def stub_world(monkeypatch):
    """The codec, the ears and the files: audio is 'heard' as feats_of its codes, nothing is written."""
    monkeypatch.setattr(reason, "write_audio", lambda rt, codes, path, vae=True: codes.shape[1] / 50)
    monkeypatch.setattr(reason, "to_wave", lambda rt, codes, vae=True: (codes, 16000))
    monkeypatch.setattr(reason, "listen", lambda rt, wav: feats_of(wav))


@pytest.fixture
def settings(tmp_path):
    return reason.Settings(out=str(tmp_path), max_seconds=0.1, echo=False)  # audio: 5 frames at most


# ---------------------------------------------------------------------------------------------- driven by weights

WORD = N_SPECIAL + ord("~")  # the one text token the driven models write


def driven_model(audio_first, text_end, audio_end):
    """A one-layer UALM whose choices are set by its weights.

    Embedding dimensions mark what a row is: 0 <|assistant|>, 1 <|text|>, 2 WORD, 3 audio
    (1/8 on each codebook id: 1 on a frame), 7 any row but pad. The attention's queries and
    keys are zero, so it averages over every row so far; its values copy dimension 3 into 4
    and 2 into 5, so a row's dimension 4 is above 0 once audio has been written, its
    dimension 5 once WORD has. The MLP and the adapter are off. The head reads: a <|text|>
    row -> WORD; a WORD row -> text_end; an audio row -> audio_end; an <|assistant|> row ->
    audio_first: <|audio|> until audio has been written, then <|text|>; else <|text|> until
    WORD has been written, then <|audio|>. Codes come from the random audio rows of the head,
    codebook 0's pad (a zero row) never among the top 20, so every clip runs to max_frames."""
    torch.manual_seed(0)
    m = UALM(CFG).eval()
    E, W = m.lm.model.embed_tokens.weight, m.lm.lm_head.weight  # specials and text
    A, H = m.audio_embed.weight, m.audio_head.weight  # the audio rows
    attn = m.lm.model.layers[0].self_attn
    with torch.no_grad():
        E.zero_()
        A.zero_()
        E[ASSISTANT, 0] = E[TEXT, 1] = E[WORD, 2] = 1.0
        A[:, 3] = 1.0 / N_STREAMS
        E[1:, 7] = A[:, 7] = 1.0
        for p in (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight,
                  attn.v_proj.bias, attn.o_proj.weight, m.lm.model.layers[0].mlp.down_proj.weight,
                  *m.adapter.parameters()):
            p.zero_()
        attn.v_proj.weight[0, 3] = attn.v_proj.weight[1, 2] = 1.0  # kv head 0, channels 0 and 1
        attn.o_proj.weight[4, 0] = attn.o_proj.weight[5, 1] = 1.0  # head 0's channels -> dimensions 4 and 5
        W.zero_()
        H[0] = 0.0  # codebook 0's pad
        W[WORD, 1] = 1000.0
        W[text_end, 2] = 1000.0
        W[audio_end, 3] = 1000.0
        first, then, seen = (AUDIO, TEXT, 4) if audio_first else (TEXT, AUDIO, 5)
        W[first, 0] = 1.0
        W[then, seen] = 200.0
    return m


def runtime(model):
    return types.SimpleNamespace(model=model, tok=TOK, device="cpu")


def flow(steps):
    """Steps -> what happened, in short: 'user', 'hears', or the assistant's 'text eot', 'audio eos', ..."""
    ends = {EOT: "eot", EOS: "eos"}
    return [("hears" if s["kind"] == "audio" else "user") if s["role"] == "user" else f"{s['kind']} {ends[s['end']]}"
            for s in steps]


TEXT_THEN_AUDIO = dict(audio_first=False, text_end=EOT, audio_end=EOS)  # the order the model is trained on
AUDIO_THEN_TEXT = dict(audio_first=True, text_end=EOS, audio_end=EOT)  # the mirrored weights


def test_enrich_follows_the_weights(monkeypatch, settings):
    stub_world(monkeypatch)
    steps = reason.enrich(runtime(driven_model(**TEXT_THEN_AUDIO)), "an alarm", settings)
    assert flow(steps) == ["user", "text eot", "audio eos"]
    assert steps[1]["content"] == "~" and steps[2]["codes"].shape == (8, 5)
    steps = reason.enrich(runtime(driven_model(**AUDIO_THEN_TEXT)), "an alarm", settings)
    assert flow(steps) == ["user", "audio eot", "text eos"]


def test_reflect_regenerates_while_the_model_goes_on_and_stops_when_it_ends_its_turn(monkeypatch, settings):
    """Text then audio: after hearing, the model (having written WORD) chooses audio and
    ends its turn there, so each round holds a new audio, heard by the next, until --rounds
    run out. Audio then text: after hearing it writes text and <|eos|>: one round, no new audio."""
    stub_world(monkeypatch)
    steps = reason.reflect(runtime(driven_model(**TEXT_THEN_AUDIO)), "A bell.", 3, settings)
    assert flow(steps) == ["user", "text eot", "audio eos"] + ["hears", "audio eos"] * 3
    heard = [s["path"] for s in steps if s["role"] == "user" and s["kind"] == "audio"]
    assert heard == [steps[i]["path"] for i in (2, 4, 6)]  # each round hears the audio written last
    steps = reason.reflect(runtime(driven_model(**AUDIO_THEN_TEXT)), "A bell.", 3, settings)
    assert flow(steps) == ["user", "audio eot", "text eos", "hears", "text eos"]


def test_dialogue_answers_each_turn_without_audio(monkeypatch, settings):
    """A text segment that ends with <|eos|> ends the turn without audio: a question the user
    answers; the next turn (WORD written) is audio, which ends the dialogue."""
    stub_world(monkeypatch)
    asked = []
    model = driven_model(audio_first=False, text_end=EOS, audio_end=EOS)
    steps = reason.dialogue(runtime(model), "a rhythm", lambda q: asked.append(q) or "a drum", settings)
    assert flow(steps) == ["user", "text eos", "user", "audio eos"] and asked == ["~"]
    assert steps[2]["content"] == "a drum"
    steps = reason.dialogue(runtime(driven_model(**AUDIO_THEN_TEXT)), "a rhythm", asked.append, settings)
    assert flow(steps) == ["user", "audio eot", "text eos"] and asked == ["~"]  # no question this time


def test_a_turn_that_never_ends_is_cut(monkeypatch, settings):
    """Every END <|eot|>: audio, then text after text; the program cuts the turn and says so."""
    stub_world(monkeypatch)
    with pytest.raises(ValueError, match=f"{reason.MAX_SEGMENTS} segments in one turn"):
        reason.enrich(runtime(driven_model(audio_first=True, text_end=EOT, audio_end=EOT)), "an alarm", settings)
    with pytest.raises(ValueError, match="ended its turn without writing audio"):
        reason.enrich(runtime(driven_model(audio_first=False, text_end=EOS, audio_end=EOS)), "an alarm", settings)


def test_each_step_prints_the_modality_and_the_end(monkeypatch, settings, capsys):
    stub_world(monkeypatch)
    settings.echo = True
    reason.enrich(runtime(driven_model(**TEXT_THEN_AUDIO)), "an alarm", settings)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines == ["[1] user: an alarm", "[2] assistant (text, then <|eot|>): ~",
                     f"[3] assistant (audio, then <|eos|>) wrote: {settings.out}/step3.wav (0.10 s)"]


# ---------------------------------------------------------------------------------------------- the template

def segments(messages):
    """A training conversation's assistant segments, each with the END that follows it there."""
    return [(m, EOT if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant" else EOS)
            for i, m in enumerate(messages) if m["role"] == "assistant"]


class Scripted:
    """Stands in for the model: chooses the modality, writes the content and the END of the
    given segments in order, and records every prefix (rows, feats) it was asked to continue."""

    def __init__(self, monkeypatch, script):
        self.script, self.calls, self.end_of_audio = list(script), [], None
        stub_world(monkeypatch)
        monkeypatch.setattr(reason, "choose_modality", self.modality)
        monkeypatch.setattr(reason, "generate_text", self.text)
        monkeypatch.setattr(reason, "generate_audio", self.audio)
        monkeypatch.setattr(reason, "choose_end", self.end)

    def modality(self, model, rows, feats=None):
        self.calls.append((rows, feats))
        return TEXT if "text" in self.script[0][0] else AUDIO

    def text(self, model, rows, feats=None, max_tokens=200):
        self.calls.append((rows, feats))
        message, end = self.script.pop(0)
        return [t + N_SPECIAL for t in TOK.encode(message["text"])] + [end]

    def audio(self, model, rows, feats=None, **kw):
        self.calls.append((rows, feats))
        message, self.end_of_audio = self.script.pop(0)
        return [message["codes"]]

    def end(self, model, rows, feats=None):
        self.calls.append((rows, feats))
        return self.end_of_audio


@pytest.fixture
def rt():
    torch.manual_seed(0)
    return runtime(UALM(CFG).eval())


def clip(seed, T=12):
    return torch.randint(0, 1024, (8, T), generator=torch.Generator().manual_seed(seed))


def toy_row(index=8):
    """A clip of the toy world as generation.jsonl holds it (8: a plucked string, then drum hits)."""
    plan = world.make_plan(0, index)
    return {"location": "audio/x.wav", "caption": world.short_caption(plan), "vague_prompt": world.vague_prompt(plan),
            "rich_caption": world.rich_caption(plan), "events": plan["events"], "layout": plan["layout"]}




def training_cuts(messages):
    """The training sample cut where the model decides, per assistant segment: before its
    modality, before its content, and for audio before its END -> [[(rows, feats of the
    audio heard before)] per segment]."""
    s = build(messages, TOK.encode, CFG)
    heard = [m["feats"] for m in messages if "feats" in m]

    def cut(n):
        rows = s.ids[:n]
        k = int((rows[:, 0] == AUDIO_IN).sum())  # heard frames so far
        return rows, torch.cat(heard)[:k] if k else None
    starts = (s.ids[:, 0] == ASSISTANT).nonzero()[:, 0].tolist()
    out = []
    for i, m in zip(starts, [m for m in messages if m["role"] == "assistant"]):
        out.append([cut(i + 1), cut(i + 2)] + ([cut(i + 2 + len(audio_rows(CFG, m["codes"])))]
                                                if "codes" in m else []))
    return out


def assert_prefixes(calls, cuts):
    cuts = [c for per_segment in cuts for c in per_segment]
    assert len(calls) == len(cuts)
    for (rows, feats), (want, want_feats) in zip(calls, cuts):
        assert torch.equal(rows, want)
        assert (feats is None) == (want_feats is None)
        if feats is not None:
            assert torch.equal(feats, want_feats)


def test_enrich_writes_from_the_training_prefixes(monkeypatch, rt, settings):
    row, codes = toy_row(), clip(0)
    conversation = tasks.enrich(row, {"codes": {row["location"]: codes}})
    model = Scripted(monkeypatch, segments(conversation))
    steps = reason.enrich(rt, row["vague_prompt"], settings)
    assert_prefixes(model.calls, training_cuts(conversation))
    assert flow(steps) == ["user", "text eot", "audio eos"]
    assert steps[1]["content"] == row["rich_caption"] and steps[2]["path"].endswith("step3.wav")


def test_dialogue_asks_until_the_caption(monkeypatch, rt, settings):
    row, codes = toy_row(), clip(1)
    turns = tasks.dialogue_turns(row)  # sounds, layout, details
    conversation = tasks.dialogue(row, {"codes": {row["location"]: codes}})
    model = Scripted(monkeypatch, segments(conversation))
    steps = reason.dialogue(rt, row["vague_prompt"], dict(turns).get, settings)
    assert_prefixes(model.calls, training_cuts(conversation))
    assert [s["content"] for s in steps if s["role"] == "user"] == [tasks.DIALOGUE_PROMPT + row["vague_prompt"]] + [a for _, a in turns]
    assert flow(steps)[-2:] == ["text eot", "audio eos"]


def reflection_item(row):
    plan = world.make_plan(0, 8)
    _, flawed, critique = world.flaw(plan, np.random.default_rng(0))
    return {**row, "location": "flawed/x.wav", "reference": "audio/x.wav", "critique": critique,
            "flawed_caption": world.short_caption(flawed)}


def test_reflect_replays_the_template_each_round(monkeypatch, rt, settings):
    """Round 1 hears the first clip (the flawed template): the heard caption, the critique,
    <|eot|>, the fix. Round 2 hears the fix (the template with a right first attempt): the
    heard caption, a critique that ends the turn (<|eos|>): stop."""
    row = toy_row()
    item = reflection_item(row)
    A = {"codes": {"flawed/x.wav": clip(2), "audio/x.wav": clip(3)}}
    A["feats"] = {k: feats_of(v) for k, v in A["codes"].items()}
    flawed, fine = tasks.reflect(item, A), tasks.reflect(item, A, flawed=False)
    assert [m["text"] for m in flawed if "text" in m][2:4] == [item["flawed_caption"], item["critique"]]
    assert [m["text"] for m in fine if "text" in m][2] == row["caption"]  # a right clip is heard as the caption
    model = Scripted(monkeypatch, segments(flawed) + segments(fine)[2:])
    steps = reason.reflect(rt, row["caption"], 5, settings)
    assert_prefixes(model.calls, training_cuts(flawed) + training_cuts(fine)[2:])
    assert steps[0]["content"] == tasks.REFLECT_PROMPT + row["caption"]
    assert flow(steps) == ["user", "text eot", "audio eos", "hears", "text eot", "text eot", "audio eos", "hears",
                           "text eot", "text eos"]
    heard = [s["path"] for s in steps if s["role"] == "user" and s["kind"] == "audio"]
    assert heard == [steps[2]["path"], steps[6]["path"]]  # the first clip, then the fix


def test_reflect_on_a_clip_too_short_to_hear_says_so(monkeypatch, rt, settings):
    """One frame (20 ms) is under the encoder's 30 ms: a clear error, not the encoder's."""
    Scripted(monkeypatch, [({"text": "plan"}, EOT), ({"codes": clip(4, T=1)}, EOS)])
    with pytest.raises(ValueError, match="1 frame\\(s\\) long, too short to hear"):
        reason.reflect(rt, "A bell.", 2, settings)
    with pytest.raises(ValueError, match="rounds"):
        reason.reflect(rt, "A bell.", 0, settings)


def test_scripted_answers_then_the_terminal(monkeypatch):
    reply = reason.replies("bell and drum|one after the other|a low bell; two drum hits")
    assert [reply("?") for _ in range(3)] == ["bell and drum", "one after the other", "a low bell; two drum hits"]

    def no_terminal(prompt=""):
        raise EOFError
    monkeypatch.setattr("builtins.input", no_terminal)
    with pytest.raises(ValueError, match="--answers"):
        reply("?")


@pytest.mark.parametrize("argv, says", [
    (["--prompt", "  "], "--prompt is empty"),
    (["--mode", "dream", "--prompt", "an alarm"], "--mode dream is unknown"),
    (["--mode", "reflect", "--prompt", "A bell.", "--rounds", "0"], "--rounds is 0"),
    (["--prompt", "an alarm", "--ckpt", "no/such.pt"], "no/such.pt: no such checkpoint"),
])
def test_cli_bad_input_is_one_sentence(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        reason.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: " + says) and err.count("\n") == 1
