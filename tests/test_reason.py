"""reason.py against the training template: every prefix the model writes from must be the
training conversation (tasks.py through sequences.build) cut where that segment's content
starts. The model is scripted (it writes the training sample's own texts and clips), so
the chains are known; the reflection loop's stopping rule and the CLI's errors too."""

import types

import numpy as np
import pytest
import torch

import reason
import tasks
from toy import world
from model import ASSISTANT, AUDIO_IN, N_SPECIAL, UALM, UALMConfig
from sequences import build

CFG = UALMConfig(text_size=128, audio_dim=16, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=1, num_attention_heads=4,
                                                            num_key_value_heads=2, max_position_embeddings=2048))


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


class Scripted:
    """Stands in for the model: writes the given texts and clips in order and records every
    prefix (rows, feats) it was asked to continue."""

    def __init__(self, monkeypatch, texts, clips):
        self.texts, self.clips, self.calls = list(texts), list(clips), []
        monkeypatch.setattr(reason, "generate_text", self.text)
        monkeypatch.setattr(reason, "generate_audio", self.audio)
        monkeypatch.setattr(reason, "write_audio", lambda rt, codes, path, vae=True: codes.shape[1] / 50)
        monkeypatch.setattr(reason, "to_wave", lambda rt, codes, vae=True: (codes, 16000))
        monkeypatch.setattr(reason, "listen", lambda rt, wav: feats_of(wav))

    def text(self, model, rows, feats=None, max_tokens=200):
        self.calls.append((rows, feats))
        return [t + N_SPECIAL for t in TOK.encode(self.texts.pop(0))]

    def audio(self, model, rows, feats=None, **kw):
        self.calls.append((rows, feats))
        return [self.clips.pop(0)]


@pytest.fixture
def rt():
    torch.manual_seed(0)
    return types.SimpleNamespace(model=UALM(CFG).eval(), tok=TOK, device="cpu")


@pytest.fixture
def settings(tmp_path):
    return reason.Settings(out=str(tmp_path), echo=False)


def clip(seed, T=12):
    return torch.randint(0, 1024, (8, T), generator=torch.Generator().manual_seed(seed))


def toy_row(index=8):
    """A clip of the toy world as generation.jsonl holds it (8: a plucked string, then drum hits)."""
    plan = world.make_plan(0, index)
    return {"location": "audio/x.wav", "caption": world.short_caption(plan), "vague_prompt": world.vague_prompt(plan),
            "rich_caption": world.rich_caption(plan), "events": plan["events"], "layout": plan["layout"]}


def training_cuts(messages):
    """The training sample cut after each assistant segment's <|assistant|> <|modality|>:
    the prefixes the model learned to continue -> [(rows, feats of the audio heard before)]."""
    s = build(messages, TOK.encode, CFG)
    heard = [m["feats"] for m in messages if "feats" in m]
    out = []
    for i in (s.ids[:, 0] == ASSISTANT).nonzero()[:, 0].tolist():
        rows = s.ids[:i + 2]
        n = int((rows[:, 0] == AUDIO_IN).sum())  # heard frames so far
        out.append((rows, torch.cat(heard)[:n] if n else None))
    return out


def assert_prefixes(calls, cuts):
    assert len(calls) == len(cuts)
    for (rows, feats), (want, want_feats) in zip(calls, cuts):
        assert torch.equal(rows, want)
        assert (feats is None) == (want_feats is None)
        if feats is not None:
            assert torch.equal(feats, want_feats)


def test_enrich_writes_from_the_training_prefixes(monkeypatch, rt, settings):
    row, codes = toy_row(), clip(0)
    model = Scripted(monkeypatch, [row["rich_caption"]], [codes])
    steps = reason.enrich(rt, row["vague_prompt"], settings)
    assert_prefixes(model.calls, training_cuts(tasks.enrich(row, {"codes": {row["location"]: codes}})))
    assert [(s["kind"], s["role"]) for s in steps] == [("text", "user"), ("text", "assistant"), ("audio", "assistant")]
    assert steps[1]["content"] == row["rich_caption"] and steps[2]["path"].endswith("step3.wav")


def test_dialogue_asks_until_the_caption(monkeypatch, rt, settings):
    row, codes = toy_row(), clip(1)
    turns = tasks.dialogue_turns(row)  # sounds, layout, details
    model = Scripted(monkeypatch, [q for q, _ in turns] + [row["rich_caption"]], [codes])
    steps = reason.dialogue(rt, row["vague_prompt"], dict(turns).get, settings)
    assert_prefixes(model.calls, training_cuts(tasks.dialogue(row, {"codes": {row["location"]: codes}})))
    assert [s["content"] for s in steps if s["role"] == "user"] == [tasks.DIALOGUE_PROMPT + row["vague_prompt"]] + [a for _, a in turns]
    assert steps[-1]["kind"] == "audio"


def test_reflect_replays_the_template_each_round(monkeypatch, rt, settings):
    """Round 1 hears the first clip (the flawed template), round 2 the corrected one (the
    template with a right first attempt), whose critique says nothing is wrong: stop."""
    row = toy_row()
    critique = world.flaw(world.make_plan(0, 8), np.random.default_rng(0))[2]
    item = {**row, "location": "flawed/x.wav", "reference": "audio/x.wav", "critique": critique}
    A = {"codes": {"flawed/x.wav": clip(2), "audio/x.wav": clip(3)}}
    A["feats"] = {k: feats_of(v) for k, v in A["codes"].items()}
    right = f"Plan: {row['caption']} Heard: {row['caption']} {tasks.NO_PROBLEM}"
    model = Scripted(monkeypatch, [row["rich_caption"], critique, right], [A["codes"]["flawed/x.wav"],
                                                                            A["codes"]["audio/x.wav"]])
    steps = reason.reflect(rt, row["caption"], 5, settings)
    flawed, fine = training_cuts(tasks.reflect(item, A)), training_cuts(tasks.reflect(item, A, flawed=False))
    assert_prefixes(model.calls, flawed + fine[2:])  # plan, audio, critique, fix; then the fix's critique
    assert steps[0]["content"] == tasks.TTA_PROMPT + row["caption"]
    assert [s["content"] for s in steps if s["kind"] == "text"][-1] == right
    assert [s["path"] for s in steps if s["role"] == "user" and s["kind"] == "audio"] == \
        [steps[2]["path"], steps[5]["path"]]  # it heard the first clip, then the fix


@pytest.mark.parametrize("rounds", [1, 3])
def test_reflect_stops_at_no_problem_or_after_all_rounds(monkeypatch, rt, settings, rounds):
    row = toy_row()
    right = f"Plan: {row['caption']} Heard: {row['caption']} {tasks.NO_PROBLEM}"
    wrong = "Plan: a bell. Heard: a drum. Problem: the bell is missing. Fix: add the bell."
    Scripted(monkeypatch, ["plan", right], [clip(4)])
    kinds = [(s["kind"], s["role"]) for s in reason.reflect(rt, "A bell.", rounds, settings)]
    assert kinds == [("text", "user"), ("text", "assistant"), ("audio", "assistant"), ("audio", "user"),
                     ("text", "assistant")]
    Scripted(monkeypatch, ["plan"] + [wrong] * rounds, [clip(5 + i) for i in range(rounds + 1)])
    steps = reason.reflect(rt, "A bell.", rounds, settings)
    assert sum(s["kind"] == "text" and s["role"] == "assistant" for s in steps) == 1 + rounds  # plan + critiques
    assert sum(s["kind"] == "audio" and s["role"] == "assistant" for s in steps) == 1 + rounds  # + the last fix
    with pytest.raises(ValueError, match="rounds"):
        reason.reflect(rt, "A bell.", 0, settings)


def test_reflect_on_a_clip_too_short_to_hear_says_so(monkeypatch, rt, settings):
    """One frame (20 ms) is under the encoder's 30 ms: a clear error, not the encoder's."""
    Scripted(monkeypatch, ["plan"], [clip(4, T=1)])
    with pytest.raises(ValueError, match="1 frame\\(s\\) long, too short to hear"):
        reason.reflect(rt, "A bell.", 2, settings)


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
