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
    import world
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
