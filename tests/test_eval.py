"""eval.py's FD and KL against closed forms and an independent route to the same trace."""

import numpy as np
import pytest
import torch

from eval import frechet_distance, kl


def test_fd_1d_equals_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (500, 1)), rng.normal(-0.5, 0.5, (400, 1))
    want = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)


def test_fd_matches_trace_of_sqrtm_via_eigenvalues_of_the_product():
    """Tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a S_b) (a non-symmetric matrix with
    real, non-negative eigenvalues): a different route from eval.py's symmetric one."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.3
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = np.sqrt(np.linalg.eigvals(sa @ sb).real.clip(min=0)).sum()
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-7)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_kl_worked_example():
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.9, 0.1], dtype=torch.float64)
    assert kl(p, q) == pytest.approx(0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1))
    assert kl(p, p) == 0.0


def test_every_question_of_the_world_has_its_kind():
    from toy import world
    from eval import question_kind
    asked = {}
    for i in range(200):
        for q, _ in world.questions(world.make_plan(0, i), np.random.default_rng(i)):
            asked.setdefault(question_kind(q), q)
    assert set(asked) == {"events in order", "presence", "ticks per second", "count", "pitch", "direction",
                          "loudness", "overlap", "order"}
    assert question_kind("How many ticks per second?") == "ticks per second"
    assert question_kind("How many beeps are there?") == "count"
    assert question_kind("Is there a bell?") == "presence"


def test_binding_worked_example(monkeypatch):
    """eval_binding on three hand-made clips (the second has one loudness: not asked), with two
    stand-in models: one that reads the named sound, one that always says 'loud'."""
    import eval as ev
    rows = [{"location": "a", "events": [{"keyword": "bell", "loudness": "loud"}, {"keyword": "drum", "loudness": "quiet"}]},
            {"location": "b", "events": [{"keyword": "hum", "loudness": "quiet"}, {"keyword": "beep", "loudness": "quiet"}]},
            {"location": "c", "events": [{"keyword": "hiss", "loudness": "loud"}, {"keyword": "ticking", "loudness": "quiet"},
                                         {"keyword": "bell", "loudness": "loud"}]}]
    truth = {(r["location"], e["keyword"]): e["loudness"] for r in rows for e in r["events"]}
    monkeypatch.setattr(ev, "listen", lambda rt, path: path)
    monkeypatch.setattr(ev, "prefix", lambda messages, *a: ((messages[1]["feats"], messages[0]["text"]), None))
    monkeypatch.setattr(ev, "decode_text", lambda tok, answer: answer)
    rt = type("Runtime", (), {"tok": None, "model": type("M", (), {"cfg": None})})
    reads = lambda model, x, f, max_tokens: truth[x[0], x[1].split("Is the ")[1].split(" loud")[0]]  # noqa: E731
    monkeypatch.setattr(ev, "generate_text", reads)
    assert ev.eval_binding(rt, rows) == (0, 2, 5, 5)
    monkeypatch.setattr(ev, "generate_text", lambda *a, **k: "loud")
    assert ev.eval_binding(rt, rows) == (2, 2, 3, 5)


def _stand_in_world(monkeypatch, ev):
    """Codes (8, T) filled with 1 'are' a bell, with 2 a drum: the analyzer reads the value back,
    adherence is 1 when the sets of sounds are equal."""
    names = {1: "bell", 2: "drum"}
    monkeypatch.setattr(ev, "analyze", lambda wav: [{"keyword": names[int(wav.flat[0])]}])
    same = lambda found, events: float({f["keyword"] for f in found} == {e["keyword"] for e in events})  # noqa: E731
    monkeypatch.setattr(ev, "adherence", lambda found, events: {"events": same(found, events), "score": same(found, events)})
    codec = type("Codec", (), {"decode": staticmethod(lambda codes: codes.float())})
    return type("Runtime", (), {"codec": codec})


def test_why_reflection_worked_example(monkeypatch):
    """Two scripted chains: a right plan, a right first audio and a critique that says so; a
    wrong plan, a wrong audio, a critique that names a problem (and mishears), then a right audio."""
    import eval as ev
    rt = _stand_in_world(monkeypatch, ev)
    clip = lambda v: torch.full((8, 3), v)  # noqa: E731
    text = lambda t: {"kind": "text", "role": "assistant", "content": t}  # noqa: E731
    audio = lambda v: {"kind": "audio", "role": "assistant", "codes": clip(v)}  # noqa: E731
    heard = {"kind": "audio", "role": "user"}
    chains = {"A bell.": [text("Keywords: bell\nLayout: bell"), audio(1), heard,
                          text("Plan: A bell. Heard: A bell. Problem: none.")],
              "A drum.": [text("Keywords: bell\nLayout: bell"), audio(1), heard,
                          text("Plan: A bell. Heard: A hum. Problem: the drum is missing. Fix: add it."), audio(2)]}
    monkeypatch.setattr(ev.reason, "reflect", lambda rt, caption, rounds, s: chains[caption])
    rows = [{"caption": c, "duration": 1.0, "events": [{"keyword": c[2:-1].lower()}]} for c in chains]
    assert ev.why_reflection(rt, rows, [0]) == {
        "chains": 2, "plan_right": 1, "first_right": 1, "says_none": 1, "verdict": 2, "heard": 1,
        "regenerated": 1, "first": 0.0, "second": 1.0, "better": 1, "worse": 0}


def test_why_dpo_worked_example(monkeypatch):
    import eval as ev
    rt = _stand_in_world(monkeypatch, ev)
    rows = [{"caption": "A bell.", "events": [{"keyword": "bell"}]}, {"caption": "A drum.", "events": [{"keyword": "drum"}]}]
    clip = lambda v: torch.full((8, 3), v)  # noqa: E731
    pairs = [("A bell.", clip(1), clip(2), 0.3), ("A drum.", clip(1), clip(2), 0.2), ("A drum.", clip(2), clip(2), 0.1)]
    assert ev.why_dpo(rt, pairs, rows) == (1, 1, 1)
    with pytest.raises(ValueError, match="not in the manifest"):
        ev.why_dpo(rt, [("A hum.", clip(1), clip(2), 0.3)], rows)


def test_lengths_against_the_worlds_ranges():
    """in_range and layout_table on worked examples: the world gives 'sequence' 3-5 s and
    'single' 2-5 s; a length within half a 20 ms frame of a bound counts as inside; a layout's
    adherence and events right are the means of its clips'."""
    import eval as ev
    assert ev.length_range("sequence") == (3.0, 5.0)
    assert [bool(ev.in_range("sequence", s)) for s in (2.98, 2.99, 3.5, 5.0, 5.01, 5.02)] == \
        [False, True, True, True, True, False]
    clips = [("single", 0.2, 0.0, 0.0), ("single", 3.0, 1.0, 1.0), ("single", 4.0, 0.75, 1.0),
             ("single", 6.0, 0.25, 0.0), ("sequence", 4.0, 0.5, 1.0)]
    table = ev.layout_table(clips)
    # numpy's linear percentiles; adherence (0 + 1 + 0.75 + 0.25) / 4, events 2 of 4
    assert table[2] == "| single | 4 | 2.0-5.0 | 1.0 / 3.5 / 5.4 | 50.0% | 50.0% | 50.0% |"
    assert table[3] == "| sequence | 1 | 3.0-5.0 | 4.0 / 4.0 / 4.0 | 100.0% | 50.0% | 100.0% |"
    assert len(table) == 4  # header, rule, the two layouts asked
