"""The toy world and its files: determinism, formats, resampler, bad input, the analyzer."""
import json

import numpy as np
import pytest
import soundfile as sf

from toy import analyzer
import data
from toy import world

SEED = 0
N_ANALYZED = 100           # ground-truth clips the analyzer is scored on
N_DISTORTED = 40


def test_same_seed_same_clip_whatever_n():
    a, b = data.make_example(SEED, 5), data.make_example(SEED, 5)
    assert np.array_equal(a["master"], b["master"]) and np.array_equal(a["audio"], b["audio"])
    assert (a["caption"], a["rich_caption"], a["qa"], a["text_task"]) == \
           (b["caption"], b["rich_caption"], b["qa"], b["text_task"])
    assert not np.array_equal(a["audio"][:1000], data.make_example(SEED + 1, 5)["audio"][:1000])


def test_clip_i_is_independent_of_n(tmp_path):
    data.write_dataset(tmp_path / "two", n=2, seed=SEED)
    data.write_dataset(tmp_path / "four", n=4, seed=SEED)
    two, four = data.read_generation(tmp_path / "two/generation.jsonl"), data.read_generation(tmp_path / "four/generation.jsonl")
    for x, y in zip(two, four):
        assert {k: v for k, v in x.items() if "location" not in k} == {k: v for k, v in y.items() if "location" not in k}
        assert np.array_equal(sf.read(x["location"])[0], sf.read(y["location"])[0])


def test_world_follows_its_definitions():
    for i in range(200):
        plan = world.make_plan(SEED, i)
        assert 2.0 <= plan["duration"] <= 5.0
        assert len(plan["events"]) == world.LAYOUTS[plan["layout"]][0]
        for ev in plan["events"]:
            assert 0 <= ev["onset"] < ev["offset"] <= plan["duration"]
            if ev["keyword"] in world.COUNTED:
                assert 1 <= ev["count"] <= 4 and len(ev["times"]) == ev["count"]
            if "f0" in ev:
                lo, hi = world.PITCH_RANGE[ev["keyword"]]
                assert lo <= ev["f0"] <= hi and world.pitch_label(ev["keyword"], ev["f0"]) == ev["pitch"]
        if plan["layout"] in ("sequence", "sequence3"):
            evs = plan["events"]
            assert all(a["offset"] <= b["onset"] for a, b in zip(evs, evs[1:]))


def test_texts():
    ex = data.make_example(SEED, 3)
    keywords = [ev["keyword"] for ev in ex["plan"]["events"]]
    rich = ex["rich_caption"].split("\n")
    assert rich[0] == "Keywords: " + ", ".join(keywords)
    assert rich[1].startswith("Layout: ") and rich[2].startswith("Description: ")
    families = [next(v for v, kws in world.VAGUE.items() if k in kws) for k in keywords]
    assert all(f in ex["vague_prompt"] for f in families)
    assert all(q.endswith("?") and a and len(a.split()) <= 4 for q, a in ex["qa"])
    question, answer = world.arithmetic_task(np.random.default_rng(1))
    numbers = [int(w) for w in question.replace("?", "").replace(".", "").split() if w.isdigit()]
    assert int(answer) in (numbers[0] + numbers[1], numbers[0] - numbers[1], numbers[0] * numbers[1],
                           numbers[0] // numbers[1])


def test_a_question_has_one_answer_per_clip():
    """No clip asks the same question twice with two answers (a clip with both sirens once
    asked "Is the siren rising or falling?" twice, answered "rising" and "falling")."""
    for i in range(300):
        plan = world.make_plan(SEED, i)
        answers = {}
        for q, a in world.questions(plan, np.random.default_rng(i)):
            assert answers.setdefault(q, a) == a, (i, q, answers[q], a)


def test_flaws_name_the_flaw_and_the_fix():
    kinds = set()
    for i in range(60):
        plan = world.make_plan(SEED, i)
        found = world.flaw(plan, np.random.default_rng(i))
        if found is None:
            assert plan["layout"] == "single" and plan["events"][0]["keyword"] not in world.COUNTED
            continue
        kind, flawed, critique = found
        kinds.add(kind)
        assert "Problem:" in critique and "Fix:" in critique and flawed != plan
        if kind == "order swapped":
            assert [e["keyword"] for e in flawed["events"]] != [e["keyword"] for e in plan["events"]]
        if kind == "event missing":
            assert len(flawed["events"]) == len(plan["events"]) - 1
        if kind == "overlap instead of sequence":
            assert flawed["layout"] == "together"
    assert kinds == {"order swapped", "event missing", "overlap instead of sequence", "wrong count"}


def test_format_round_trip(tmp_path):
    out = data.write_dataset(tmp_path, n=6, seed=SEED)
    gen = data.read_generation(out / "generation.jsonl")
    assert len(gen) == 6
    for row in gen:
        x, sr = sf.read(row["location"], always_2d=True)
        assert sr == 16000 and x.shape[1] == 1 and abs(len(x) / sr - row["duration"]) < 1e-3
        m, msr = sf.read(row["master_location"], always_2d=True)
        assert msr == 48000 and m.shape[1] == 2 and abs(len(m) / msr - row["duration"]) < 1e-3
        assert {"rich_caption", "vague_prompt", "events", "layout"} <= set(row)
    und = data.read_understanding(out / "understanding.json")
    assert {u["id"].split("_")[-1] for u in und} >= {"caption", "qa0"}
    for u in und:
        human, gpt = u["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<sound>\n") and gpt["from"] == "gpt"
        assert sf.info(u["sound"]).samplerate == 16000
    text = data.read_text(out / "text.jsonl")
    assert len(text) == 6 and text[0]["input"][0]["role"] == "user" and text[0]["output"].lstrip("-").isdigit()
    for row in data.read_reflection(out / "reflection.jsonl"):
        assert sf.info(row["location"]).samplerate == 16000 and "Fix:" in row["critique"]
    assert json.loads((out / "generation.jsonl").read_text().splitlines()[0])["location"].startswith("audio/")


def test_resampler_keeps_a_sine():
    t = np.arange(48000) / 48000
    x = 0.5 * np.sin(2 * np.pi * 1000 * t)
    y = data.resample(x, 48000, 16000)
    assert len(y) == 16000
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(y - ref)[200:-200].max() < 1e-3                       # same frequency and amplitude
    back = data.resample(data.resample(y, 16000, 48000), 48000, 16000)
    assert np.abs(back - y)[200:-200].max() < 1e-3
    z = data.resample(np.stack([x, x]), 48000, 44100)                  # odd ratio 147/160, stereo
    assert z.shape == (2, 44100)
    assert np.abs(z[0] - 0.5 * np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100))[200:-200].max() < 1e-3
    alias = data.resample(np.sin(2 * np.pi * 12000 * t), 48000, 16000)  # above the new Nyquist: removed
    assert np.abs(alias)[200:-200].max() < 1e-3


@pytest.mark.parametrize("sr_in, sr_out", [(48000, 16000), (16000, 48000), (44100, 16000), (22050, 16000)])
def test_resampler_matches_scipy_resample_poly_on_noise(sr_in, sr_out):
    """White noise, odd lengths, a stereo pair: data.resample against scipy.signal.resample_poly.
    Both are zero-phase windowed sincs over zero-extended input with the output's sample j at
    input position j * sr_in / sr_out and ceil(N * sr_out / sr_in) samples; they differ in
    the filter (ours cuts at 0.94 of the lower Nyquist with a Kaiser 8.6, scipy's at 1.0 with a
    Kaiser 5). So below 0.8 of the lower Nyquist their spectra agree to a fraction of a
    percent (complex: a shift or a wrong gain fails), and the whole difference (13% of the
    signal on white noise) is the top of the band, where the cutoffs differ."""
    from math import ceil, gcd
    from scipy.signal import resample_poly
    g = gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    nyquist = min(sr_in, sr_out) / 2
    rng = np.random.default_rng(sr_in + sr_out)
    for n in (sr_in // 2 + 37, 4999):
        x = rng.standard_normal((2, n)).astype(np.float32)
        ours = data.resample(x, sr_in, sr_out).astype(np.float64)
        theirs = resample_poly(x.astype(np.float64), up, down, axis=-1)
        assert ours.shape == theirs.shape == (2, ceil(n * sr_out / sr_in))
        a, b = np.fft.rfft(ours), np.fft.rfft(theirs)
        hz = np.fft.rfftfreq(ours.shape[-1], 1 / sr_out)
        low = hz < 0.8 * nyquist
        assert np.linalg.norm(a[:, low] - b[:, low]) < 0.01 * np.linalg.norm(b[:, low])
        assert np.linalg.norm(ours - theirs) < 0.2 * np.linalg.norm(theirs)
        assert np.linalg.norm(a[:, ~low] - b[:, ~low]) > 0.9 * np.linalg.norm(a - b)
        np.testing.assert_allclose(ours[1], data.resample(x[1], sr_in, sr_out), atol=1e-6)  # channels independent


def test_load_audio(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
    sf.write(str(tmp_path / "a.flac"), x, 44100)
    assert data.load_audio(tmp_path / "a.flac").shape == (16000,)
    assert data.load_audio(tmp_path / "a.flac", sr=44100, mono=False).shape == (2, 44100)


def test_bad_audio_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        data.load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.wav.*empty"):
        data.load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio" * 10)
    with pytest.raises(ValueError, match="junk.wav.*convert"):
        data.load_audio(tmp_path / "junk.wav")
    sf.write(str(tmp_path / "none.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match="none.wav.*no samples"):
        data.load_audio(tmp_path / "none.wav")


def test_master_has_air_and_width_that_the_mono_lacks():
    airy = 0
    for i in range(20):
        ex = data.make_example(SEED, i)
        left, right = ex["master"]
        assert np.corrcoef(left, right)[0, 1] < 0.995                  # a decorrelated room
        spectrum = np.abs(np.fft.rfft(ex["master"].mean(0))) ** 2
        above = spectrum[int(len(spectrum) * 8000 / 24000):].sum() / spectrum.sum()
        assert ex["audio"].shape == (round(len(left) / 3),)             # one channel at 16 kHz: no width, no air
        airy += above > 1e-3
    assert airy >= 5            # clips with hiss, ticking, bells, plucks or drums have air


def _rates(n, distort=None):
    keys = ("events", "layout", "counts", "pitch")
    hits = dict.fromkeys(keys, 0)
    for i in range(n):
        ex = data.make_example(SEED, i)
        x = ex["audio"] if distort is None else distort(ex["audio"], i)
        score = analyzer.adherence(analyzer.analyze(x), ex["plan"]["events"])
        for k in keys:
            hits[k] += score[k]
    return {k: v / n for k, v in hits.items()}


def test_analyzer_on_ground_truth_clips():
    rates = _rates(N_ANALYZED)
    print(f"\nanalyzer on {N_ANALYZED} clean clips:", rates)
    assert rates["events"] >= 0.9 and rates["layout"] >= 0.9
    assert rates["counts"] >= 0.85 and rates["pitch"] >= 0.85


def test_analyzer_survives_mild_distortion():
    def noise_and_lowpass(x, i):
        noisy = x + 0.002 * np.random.default_rng(i).standard_normal(len(x)).astype(np.float32)
        return data.resample(data.resample(noisy, 16000, 12000), 12000, 16000)[:len(x)]   # ~5.6 kHz lowpass
    rates = _rates(N_DISTORTED, noise_and_lowpass)
    print(f"\nanalyzer on {N_DISTORTED} clips with noise (-54 dBFS) and a 5.6 kHz lowpass:", rates)
    assert rates["events"] >= 0.8 and rates["layout"] >= 0.8 and rates["counts"] >= 0.8
