"""The toy world's analyzer, the stand-in for the paper's raters (its listeners and
evaluation models): which events a 16 kHz mono clip holds, in what order, with what counts
and pitches, estimated from the waveform alone with the world's own definitions
(world.py), never learned. `adherence` scores what it found against a plan; it judges the
codec's reconstructions and the LM's generated clips.

    adherence(analyze(wav16k), plan["events"]) -> {"events", "layout", "counts", "pitch", "score"}
"""
import numpy as np

from toy.world import BELL_PARTIALS, LM_SR, PITCH_RANGE, pitch_label

N_FFT, N_FFT_LOW, HOP = 1024, 2048, 160   # 64 ms / 128 ms windows, 10 ms hop, at 16 kHz
FRAME = HOP / LM_SR                       # s per spectrogram frame (10 ms)
PEAK_FLOOR_DB = -5.0       # spectral peaks below this (dB of |STFT|^2) are ignored
PEAK_PROMINENCE_DB = 15.0  # a peak must stand this far above the bins 4 away on both sides
LINK_OCTAVES = 0.04        # a peak continues a track if within this many octaves of it
# drum: Hz band of the hit's tail (the 160 -> 50 Hz sweep ends there), dB a hit must reach, fall within
# 0.2 s and rise above the rolling background
DRUM_BAND, DRUM_FLOOR_DB, DRUM_DECAY_DB, DRUM_RISE_DB = (35.0, 85.0), 21.0, 10.0, 10.0
# hiss: Hz band whose median bin only broadband noise lifts (tones fill a few bins), and the dB its floor must hold
HISS_BAND, HISS_FLOOR_DB = (2000.0, 6000.0), -12.0
# clicks: Hz band of broadband noise, dB a click must reach and rise above the rolling floor
CLICK_BAND, CLICK_FLOOR_DB, CLICK_RISE_DB = (2000.0, 7500.0), -45.0, 6.0
TICK_PERIOD = (0.11, 0.27)  # s between clicks: 4..8 per second, with slack


def spectrogram_db(x, n_fft):
    """Power spectrogram in dB with frames centred every HOP samples: (16000,), 1024 -> (101, 513)."""
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(x, n_fft // 2), n_fft)[::HOP]
    return 10 * np.log10(np.abs(np.fft.rfft(frames * np.hanning(n_fft))) ** 2 + 1e-10)


def band(n_fft, lo, hi):
    """The rfft bins between two frequencies: (1024, 2000, 6000) -> slice(128, 385)."""
    return slice(int(np.ceil(lo * n_fft / LM_SR)), int(hi * n_fft / LM_SR) + 1)


def runs(mask, min_frames):
    """(start, stop) frame pairs of True runs at least min_frames long: [0,1,1,1,0], 2 -> [(1, 4)]."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_frames]


def rolling(values, width, q):
    """The q-th percentile over a centred window: ([0, 9, 0, 0], 3, 50) -> [0, 0, 0, 0]."""
    padded = np.pad(values, width // 2, mode="edge")
    return np.percentile(np.lib.stride_tricks.sliding_window_view(padded, width), q, axis=-1)


def tracks(spec):
    """Link prominent spectral peaks into tonal tracks: (T, F) dB -> [{'start', 'end', 'f', 'f_slope', 'db', 'flat'}].

    f is the median frequency (Hz), f_slope in octaves/s, db the loudest level, flat the
    share of frames within 3 dB of it and sustain the seconds within 2 dB of it: a beep
    or a hum holds its level, a struck or plucked partial does not (see `steady`).
    """
    s = spec
    centre = s[:, 4:-4]
    is_peak = ((centre > s[:, 3:-5]) & (centre >= s[:, 5:-3]) & (centre > PEAK_FLOOR_DB)
               & (centre - np.maximum(s[:, :-8], s[:, 8:]) > PEAK_PROMINENCE_DB))
    live, done = [], []
    for t in range(len(s)):
        ks = np.flatnonzero(is_peak[t]) + 4
        a, b, c = s[t, ks - 1], s[t, ks], s[t, ks + 1]
        freqs = (ks + 0.5 * (a - c) / np.minimum(a - 2 * b + c, -1e-6)) * LM_SR / N_FFT
        done += [tr for tr in live if tr["t"][-1] < t - 2]
        live = [tr for tr in live if tr["t"][-1] >= t - 2]
        for f, level in sorted(zip(freqs, b), key=lambda p: -p[1]):
            near = [tr for tr in live if tr["t"][-1] < t and abs(np.log2(f / tr["f"][-1])) < LINK_OCTAVES]
            if near:
                tr = min(near, key=lambda tr: abs(np.log2(f / tr["f"][-1])))
            else:
                tr = {"t": [], "f": [], "db": []}
                live.append(tr)
            tr["t"].append(t), tr["f"].append(f), tr["db"].append(level)
    out = []
    for tr in done + live:
        t, f, db = (np.array(tr[k]) for k in ("t", "f", "db"))
        if len(t) < 5:
            continue
        out.append({"start": t[0] * FRAME, "end": t[-1] * FRAME, "f": float(np.median(f)),
                    "f_slope": np.polyfit(t * FRAME, np.log2(f), 1)[0], "db": db.max(),
                    "flat": float(np.mean(db >= db.max() - 3)), "sustain": float(np.sum(db >= db.max() - 2) * FRAME)})
    return out


def _span(trs):
    return min(tr["start"] for tr in trs), max(tr["end"] for tr in trs)


def steady(tr):
    """A track that holds its level (a beep, a hum) rather than decaying (a bell, a note)."""
    return tr["flat"] > 0.3 and tr["sustain"] >= 0.07


def _near(f, g, octaves=LINK_OCTAVES):
    return abs(np.log2(f / g)) < octaves


def detect_tonal(trs, spec):
    """Hum, beeps, sirens, bell and plucked notes from the tonal tracks: -> list of events."""
    found = []
    hums = [tr for tr in trs if 90 <= tr["f"] <= 215 and abs(tr["f_slope"]) < 0.1 and tr["flat"] > 0.5]
    if hums:
        main = max(hums, key=lambda tr: tr["end"] - tr["start"])
        on, off = _span([tr for tr in hums if _near(tr["f"], main["f"])])
        if off - on >= 0.4:
            found.append({"keyword": "hum", "onset": on, "offset": off, "f0": main["f"]})
    for sign, keyword in ((1, "rising siren"), (-1, "falling siren")):
        sweeps = [tr for tr in trs if 350 <= tr["f"] <= 1700 and sign * tr["f_slope"] >= 0.2
                  and tr["end"] - tr["start"] >= 0.1]
        if sum(tr["end"] - tr["start"] for tr in sweeps) >= 0.3:
            on, off = _span(sweeps)
            found.append({"keyword": keyword, "onset": on, "offset": off})
    decaying = [tr for tr in trs if not steady(tr) and abs(tr["f_slope"]) < 0.15
                and tr["end"] - tr["start"] >= 0.08]
    struck = lambda a, b: abs(a["start"] - b["start"]) < 0.06

    def bell_like(a):   # lowest of its onset group, with a partner at 2.76 or 5.4 x (no harmonic is)
        return (380 <= a["f"] <= 950 and not any(struck(a, b) and b["f"] < 0.9 * a["f"] for b in decaying)
                and any(struck(a, b) and (_near(b["f"], 2.76 * a["f"], 0.02) or _near(b["f"], 5.4 * a["f"], 0.02))
                        for b in decaying))
    bells = [a for a in decaying if bell_like(a)]
    if bells:           # one strike; its partials leave the pool of plucked notes
        a = min(bells, key=lambda tr: tr["start"])
        mine = [tr for tr in decaying if abs(tr["start"] - a["start"]) < 0.15
                and any(_near(tr["f"], p * a["f"], 0.03) for p in BELL_PARTIALS)]
        found.append({"keyword": "bell", "onset": a["start"], "offset": _span(mine)[1], "f0": a["f"]})
        decaying = [tr for tr in decaying if not any(tr is m for m in mine)]
    bell = [(ev["f0"], ev["onset"], ev["offset"]) for ev in found if ev["keyword"] == "bell"]
    beeps = [tr for tr in trs if 950 <= tr["f"] <= 2600 and abs(tr["f_slope"]) < 0.1 and steady(tr)
             and not any(on <= tr["start"] <= off and any(_near(tr["f"], p * f0, 0.03) for p in BELL_PARTIALS)
                         for f0, on, off in bell)]
    if beeps:       # the beep frequency, then count the units on that frequency's envelope
        main = max(beeps, key=lambda tr: tr["end"] - tr["start"])
        on, off = _span([tr for tr in beeps if _near(tr["f"], main["f"])])
        k = int(round(main["f"] * N_FFT / LM_SR))
        lo, hi = max(0, int(on / FRAME) - 5), int(off / FRAME) + 6
        env = spec[lo:hi, k - 1:k + 2].max(axis=1)
        units = runs(env > main["db"] - 12, 4) or [(0, hi - lo)]
        found.append({"keyword": "beep", "onset": (lo + units[0][0]) * FRAME,
                      "offset": (lo + units[-1][1]) * FRAME, "count": len(units), "f0": main["f"]})
    notes = sorted((tr for tr in decaying if 140 <= tr["f"] <= 640), key=lambda tr: tr["start"])
    groups = []     # plucked notes: decaying harmonic tracks grouped by onset, f0 = lowest
    for tr in notes:
        if groups and tr["start"] - groups[-1][0]["start"] < 0.05:
            groups[-1].append(tr)
        else:
            groups.append([tr])
    if groups:
        f0s = [min(tr["f"] for tr in g) for g in groups]
        found.append({"keyword": "plucked string", "onset": groups[0][0]["start"],
                      "offset": max(tr["end"] for tr in notes), "count": len(groups),
                      "f0": float(np.exp(np.mean(np.log(f0s)))), "times": [g[0]["start"] for g in groups]})
    return found


def detect_drum(low):
    """Drum hits: peaks of the 35..85 Hz energy that stand over its floor and decay within 0.2 s: (T, F) dB -> events."""
    e = 10 * np.log10((10 ** (low[:, band(N_FFT_LOW, *DRUM_BAND)] / 10)).sum(axis=1))
    later = np.concatenate([e[20:], np.full(20, e[-1])])
    background = rolling(e, 101, 10)
    hits = [t for t in range(len(e)) if e[t] == e[max(0, t - 12):t + 13].max() and e[t] > DRUM_FLOOR_DB
            and e[t] - later[t] > DRUM_DECAY_DB and e[t] - background[t] > DRUM_RISE_DB]
    if not hits:
        return []
    return [{"keyword": "drum", "onset": max(0.0, hits[0] * FRAME - 0.03),
             "offset": hits[-1] * FRAME + 0.25, "count": len(hits), "times": [t * FRAME for t in hits]}]


def detect_noise(spec, onsets):
    """Hiss (steady broadband floor) and ticking (a regular train of clicks): -> events.

    The hiss floor is a low percentile over time of each frame's median bin, so tones and
    clicks do not lift it; clicks are frames rising above that floor, away from the
    onsets of notes, bells and drums (which also start with a burst of noise).
    """
    found = []
    floor = rolling(np.median(spec[:, band(N_FFT, *HISS_BAND)], axis=1), 51, 20)
    hiss = runs(floor > HISS_FLOOR_DB, 40)
    if hiss:
        found.append({"keyword": "hiss", "onset": hiss[0][0] * FRAME, "offset": hiss[-1][1] * FRAME})
    e = np.median(spec[:, band(N_FFT, *CLICK_BAND)], axis=1)     # broadband only: tones leave the median
    rise = e - rolling(e, 51, 20)
    clicks = np.array([t * FRAME for t in range(len(e)) if rise[t] > CLICK_RISE_DB and e[t] > CLICK_FLOOR_DB
                       and e[t] == e[max(0, t - 5):t + 6].max()
                       and all(abs(t * FRAME - o) > 0.04 for o in onsets)])
    best = []       # the longest chain of near-equal gaps at a ticking rate
    for i in range(len(clicks)):
        chain = [clicks[i]]
        for c in clicks[i + 1:]:
            gap = c - chain[-1]
            if TICK_PERIOD[0] <= gap <= TICK_PERIOD[1] and (len(chain) < 2 or abs(gap - (chain[1] - chain[0])) < 0.03):
                chain.append(c)
        best = max(best, chain, key=len)
    if len(best) >= 4:
        found.append({"keyword": "ticking", "onset": best[0], "offset": best[-1] + 0.01,
                      "rate": int(round((len(best) - 1) / (best[-1] - best[0])))})
    return found


def analyze(wav):
    """Which events a 16 kHz mono clip holds, from the world's definitions alone.

    (48000,) float -> [{'keyword': 'bell', 'onset': 0.1, 'offset': 1.5, 'f0': 441.0, 'pitch': 'low'}, ...]
    sorted by onset; counted events carry 'count', pitched ones 'f0' and 'pitch'.
    """
    x = np.asarray(wav, np.float64)
    spec, low = spectrogram_db(x, N_FFT), spectrogram_db(x, N_FFT_LOW)
    found = detect_tonal(tracks(spec), spec) + detect_drum(low)
    onsets = [t for ev in found if ev["keyword"] in ("drum", "bell", "plucked string")
              for t in ev.get("times", [ev["onset"]])]
    found += detect_noise(spec, onsets)
    for ev in found:
        if ev["keyword"] in PITCH_RANGE:
            ev["pitch"] = pitch_label(ev["keyword"], ev["f0"])
        ev["onset"], ev["offset"] = round(float(ev["onset"]), 3), round(float(ev["offset"]), 3)
    return sorted(found, key=lambda ev: ev["onset"])


# ----------------------------------------------------------------------------- scoring
def arrangement(events):
    """Keywords grouped in time order, overlapping events sharing a group.

    [bell 0.1-1.4, drum 1.6-2.9] -> [['bell'], ['drum']]; [hum 0.1-3.9, beep 0.5-0.7] -> [['beep', 'hum']]
    Two events overlap when they share more than half of the shorter one.
    """
    groups = []
    for ev in sorted(events, key=lambda ev: ev["onset"]):
        shared = lambda g: min(ev["offset"], g["offset"]) - max(ev["onset"], g["onset"])
        shorter = lambda g: min(ev["offset"] - ev["onset"], g["offset"] - g["onset"])
        if groups and any(shared(g) > 0.5 * shorter(g) for g in groups[-1]):
            groups[-1].append(ev)
        else:
            groups.append([ev])
    return [sorted(ev["keyword"] for ev in g) for g in groups]


def adherence(detected, truth):
    """Score detected events against ground-truth events: -> {'events', 'layout', 'counts', 'pitch': bool, 'score'}.

    events: the same keywords; layout: the same arrangement (order, or overlap); counts and
    pitch: every counted / pitched true event has a detected twin with the same count / pitch
    label. score is the mean of the four.
    """
    found = {ev["keyword"]: ev for ev in detected}
    result = {"events": set(found) == {ev["keyword"] for ev in truth},
              "layout": arrangement(detected) == arrangement(truth),
              "counts": all(found.get(ev["keyword"], {}).get("count") == ev["count"]
                            for ev in truth if "count" in ev),
              "pitch": all(found.get(ev["keyword"], {}).get("pitch") == ev["pitch"]
                           for ev in truth if "pitch" in ev)}
    result["score"] = sum(result.values()) / 4
    return result
