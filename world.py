"""The toy world of SPEC section 11: nine sound events, four layouts, exact labels.

Every clip is drawn from a plan (its ground truth), rendered at 48 kHz stereo with a
decorrelated room, and described in text: short caption, rich caption (Keywords /
Layout / Description), question-answer pairs, a vague prompt, and a flawed
realisation with its critique. Clip i depends only on (seed, i).

    plan = make_plan(seed=0, index=7)
    master = render(plan, np.random.default_rng([0, 7, 1]))   # (2, N) float32, 48 kHz

The analyzer (`analyze`) reads a 16 kHz mono waveform back into events using only
these definitions; `adherence` scores what it found against a plan.
"""
import functools

import numpy as np

MASTER_SR = 48000                 # master audio: 48 kHz stereo
LM_SR = 16000                     # what the codec / encoder / analyzer see: 16 kHz mono
MAX_COUNT = 4                     # beeps, notes and hits come 1..4 times
KEYWORDS = ("hum", "beep", "rising siren", "falling siren", "hiss", "ticking",
            "plucked string", "bell", "drum")
COUNTED = {"beep": "beeps", "plucked string": "notes", "drum": "drum hits"}
PITCH_RANGE = {"hum": (100.0, 200.0), "beep": (1000.0, 2500.0),
               "plucked string": (150.0, 600.0), "bell": (400.0, 900.0)}
PITCH_BAND = 0.4                  # "low" = lowest 40% of the log range, "high" = top 40%
SIREN_LOW, SIREN_HIGH = 400.0, 1600.0
BELL_PARTIALS = (1.0, 2.0, 2.76, 5.4)
LEVEL_DB = {"loud": -6.0, "quiet": -18.0}

# layout -> (number of events, shortest clip in s); a clip is 2..5 s long
LAYOUTS = {"single": (1, 2.0), "sequence": (2, 3.0), "together": (2, 2.0),
           "sequence3": (3, 4.2)}
MAX_DURATION = 5.0
MARGIN, GAP = 0.1, 0.2            # s of silence at the clip edges / between sequence slots
UNIT_PERIOD = (0.3, 0.5)          # s between beeps / notes / hits (ticking is faster)
BEEP_LENGTH = (0.1, 0.25)
TICK_RATE = (4, 8)                # clicks per second
NOTE_LENGTH, NOTE_TAU = 0.45, 0.12
HIT_LENGTH, HIT_TAU = 0.3, 0.08
BELL_RING, BELL_TAU = 1.5, 0.5
FADE = 0.005                      # s of linear fade-out at every cut, so cuts do not click
BEEP_FADE = 0.01                  # s of fade at both ends of a beep
STEADY_FADE = 0.02                # s of fade-in/out of steady sounds (a softer edge splatters less)
ROOM_RT60, ROOM_LENGTH, ROOM_WET = 0.25, 0.3, 0.15
ROOMS, ROOM_SEED = 8, 1234       # a fixed bank of rooms; each clip draws one
# pairs too alike to play at once and still be told apart (choice)
NOT_TOGETHER = ({"rising siren", "falling siren"}, {"ticking", "hiss"})

VAGUE = {"an alarm": ("beep", "rising siren", "falling siren"),
         "something calm": ("hum", "bell"),
         "a rhythm": ("drum", "ticking"),
         "a little melody": ("plucked string",),
         "a steady noise": ("hiss",)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


# ----------------------------------------------------------------------------- plans
def pitch_label(keyword, f0):
    """'low' or 'high' by the geometric middle of the keyword's range: ('hum', 120.) -> 'low'."""
    lo, hi = PITCH_RANGE[keyword]
    return "low" if f0 < np.sqrt(lo * hi) else "high"


def sample_pitch(keyword, pitch, rng):
    """A frequency in the low or high band of a range: ('hum', 'low') -> e.g. 118.3."""
    lo, hi = PITCH_RANGE[keyword]
    u = rng.uniform(0, PITCH_BAND) if pitch == "low" else rng.uniform(1 - PITCH_BAND, 1)
    return float(lo * (hi / lo) ** u)


def sample_notes(pitch, count, rng):
    """A little melody on the semitone grid, no note repeated in a row: ('low', 3) -> [196.0, 220.0, 175.6]."""
    lo, hi = PITCH_RANGE["plucked string"]
    band = (0, PITCH_BAND) if pitch == "low" else (1 - PITCH_BAND, 1)
    semis = np.arange(int(np.ceil(12 * np.log2(hi / lo) * band[0])),
                      int(12 * np.log2(hi / lo) * band[1]) + 1)
    notes = [int(rng.choice(semis))]
    while len(notes) < count:
        notes.append(int(rng.choice([s for s in semis if abs(s - notes[-1]) >= 2])))
    return [round(lo * 2 ** (s / 12), 1) for s in notes]


def sample_event(keyword, rng):
    """The attributes of one event, before placement: 'beep' -> {'keyword', 'loudness', 'pitch', 'f0', 'count', ...}."""
    ev = {"keyword": keyword, "loudness": str(rng.choice(list(LEVEL_DB)))}
    if keyword in PITCH_RANGE:
        ev["pitch"] = str(rng.choice(["low", "high"]))
    if keyword in COUNTED:
        ev["count"] = int(rng.integers(1, MAX_COUNT + 1))
    if keyword in ("hum", "beep", "bell"):
        ev["f0"] = round(sample_pitch(keyword, ev["pitch"], rng), 1)
    if keyword == "beep":
        ev["length"] = round(float(rng.uniform(*BEEP_LENGTH)), 3)
    if keyword == "plucked string":
        ev["notes"] = sample_notes(ev["pitch"], ev["count"], rng)
    if keyword == "ticking":
        ev["rate"] = int(rng.integers(TICK_RATE[0], TICK_RATE[1] + 1))
    ev["pan"] = round(float(rng.uniform(-0.6, 0.6)), 2)
    return ev


def slots(layout, duration):
    """Time slots per event: ('sequence', 3.0) -> [(0.1, 1.4), (1.6, 2.9)]."""
    n = LAYOUTS[layout][0]
    if layout in ("single", "together"):
        return [(MARGIN, duration - MARGIN)] * n
    width = (duration - 2 * MARGIN - (n - 1) * GAP) / n
    return [(MARGIN + k * (width + GAP), MARGIN + k * (width + GAP) + width) for k in range(n)]


def place(events, layout, duration, rng):
    """Give each event onset, offset and unit times inside its slot; returns new dicts.

    ([{'keyword': 'drum', 'count': 2, ...}], 'single', 2.0) -> [{..., 'onset': 0.1, 'times': [0.1, 0.5], 'offset': 0.8}]
    """
    placed = []
    for ev, (start, end) in zip(events, slots(layout, duration)):
        ev = {k: v for k, v in ev.items() if k not in ("onset", "offset", "times", "unit")}
        kw = ev["keyword"]
        if kw in COUNTED:       # units evenly spread; "together" spreads them across the clip
            n = ev["count"]
            period = (end - start) / n if layout == "together" else min(float(rng.uniform(*UNIT_PERIOD)),
                                                                         (end - start) / n)
            longest = {"beep": 0.6 * period, "plucked string": NOTE_LENGTH, "drum": HIT_LENGTH}[kw]
            unit = min(ev.get("length", longest), longest, period)
            ev["times"] = [round(start + k * period, 3) for k in range(n)]
            ev["unit"] = round(unit, 3)
            end = ev["times"][-1] + unit
        elif kw == "bell":
            end = min(end, start + BELL_RING)
        ev["onset"], ev["offset"] = round(start, 3), round(end, 3)
        placed.append(ev)
    return placed


def make_plan(seed, index):
    """The ground truth of clip `index`: (0, 7) -> {'duration', 'layout', 'events': [...]}.

    Drawn from its own Generator seeded with (seed, index, 0), so it does not depend on
    how many clips are made.
    """
    rng = np.random.default_rng([seed, index, 0])
    layout = str(rng.choice(list(LAYOUTS)))
    n, shortest = LAYOUTS[layout]
    while True:
        keywords = [str(k) for k in rng.choice(KEYWORDS, size=n, replace=False)]
        if layout != "together" or set(keywords) not in NOT_TOGETHER:
            break
    duration = round(float(rng.uniform(shortest, MAX_DURATION)), 2)
    events = place([sample_event(k, rng) for k in keywords], layout, duration, rng)
    return {"duration": duration, "layout": layout, "events": events}


# ----------------------------------------------------------------------------- audio
def _fade(x, seconds=FADE, fade_in=True):
    """Linear fade-out (and fade-in) of `seconds` on a 1-D segment, in place; returns it."""
    k = min(int(seconds * MASTER_SR), len(x) // 2)
    if k:
        ramp = np.linspace(0, 1, k, dtype=x.dtype)
        x[-k:] *= ramp[::-1]
        if fade_in:
            x[:k] *= ramp
    return x


def karplus_strong(f0, length, rng):
    """A plucked string: a noise-filled delay line averaged into itself. (220., 4800) -> (4800,) array.

    y[n] = (y[n-P] + y[n-P-1]) / 2 has period P + 1/2, so P is chosen from f0 that way;
    blocks of P samples only depend on earlier blocks, so each block is one numpy op.
    """
    period = max(2, int(round(MASTER_SR / f0 - 0.5)))
    y = np.zeros(length + period + 1, np.float32)     # y[0] is the y[-1] = 0 the recursion reads
    y[1:period + 1] = rng.uniform(-1, 1, period)
    for start in range(period + 1, len(y), period):
        stop = min(start + period, len(y))
        y[start:stop] = 0.5 * (y[start - period:stop - period] + y[start - period - 1:stop - period - 1])
    return y[1:length + 1]


def event_audio(ev, n_samples, rng):
    """One event as a dry mono source over the whole clip: (event, 96000) -> (96000,) float32."""
    sr, x = MASTER_SR, np.zeros(n_samples, np.float32)
    gain = 10 ** (LEVEL_DB[ev["loudness"]] / 20)
    on, off = int(ev["onset"] * sr), int(ev["offset"] * sr)
    t = np.arange(off - on, dtype=np.float64) / sr
    kw = ev["keyword"]
    if kw == "hum":
        f = ev["f0"]
        seg = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t) + 0.3 * np.sin(6 * np.pi * f * t)
        x[on:off] = _fade(0.6 * seg.astype(np.float32), STEADY_FADE)
    elif kw.endswith("siren"):
        f_a, f_b = (SIREN_LOW, SIREN_HIGH) if kw == "rising siren" else (SIREN_HIGH, SIREN_LOW)
        span, r = t[-1] + 1 / sr, np.log(f_b / f_a)     # exponential sweep f_a * (f_b/f_a)^(t/span)
        x[on:off] = _fade(np.sin(2 * np.pi * f_a * span / r * np.expm1(r * t / span)).astype(np.float32), STEADY_FADE)
    elif kw == "hiss":
        x[on:off] = _fade(0.5 * rng.standard_normal(off - on).astype(np.float32), STEADY_FADE)
    elif kw == "ticking":
        click = 2 * rng.uniform(-1, 1, int(0.008 * sr)) * np.exp(-np.arange(int(0.008 * sr)) / (0.0015 * sr))
        for tick in np.arange(ev["onset"], ev["offset"] - 0.008, 1 / ev["rate"]):
            x[int(tick * sr):int(tick * sr) + len(click)] += click.astype(np.float32)
    else:
        for k, start in enumerate(ev.get("times", [ev["onset"]])):
            a = int(start * sr)
            n = min(int(ev.get("unit", ev["offset"] - ev["onset"]) * sr), n_samples - a)
            u = np.arange(n) / sr
            if kw == "beep":
                seg = np.sin(2 * np.pi * ev["f0"] * u)
            elif kw == "plucked string":
                seg = 1.5 * karplus_strong(ev["notes"][k], n, rng) * np.exp(-u / NOTE_TAU)
            elif kw == "bell":      # partials decay faster the higher they are; a short strike
                seg = sum(amp * np.sin(2 * np.pi * p * ev["f0"] * u) * np.exp(-u * np.sqrt(p) / BELL_TAU)
                          for p, amp in zip(BELL_PARTIALS, (1.0, 0.6, 0.5, 0.3)))
                seg[:int(0.003 * sr)] += rng.uniform(-0.5, 0.5, int(0.003 * sr))
            else:                   # drum: 160 -> 50 Hz sweep, decaying, plus a noise transient
                phase = 2 * np.pi * (50 * u + 110 * 0.03 * (1 - np.exp(-u / 0.03)))
                seg = np.sin(phase) * np.exp(-u / HIT_TAU)
                seg[:int(0.01 * sr)] += 0.5 * rng.uniform(-1, 1, int(0.01 * sr)) * np.exp(-u[:int(0.01 * sr)] / 0.003)
            x[a:a + n] += _fade(seg.astype(np.float32), BEEP_FADE if kw == "beep" else FADE, fade_in=kw == "beep")
    return gain * x


@functools.lru_cache(maxsize=None)
def room_spectra(size):
    """The rfft (size points) of each room's two tails: 4096 -> (ROOMS, 2, 2049) complex.

    A room is two independent exponentially decaying noise tails (one per channel, unit
    energy); a fixed bank of ROOMS rooms keeps their transforms out of every clip's cost.
    """
    n = int(ROOM_LENGTH * MASTER_SR)
    decay = np.exp(-6.9 * np.arange(n) / (ROOM_RT60 * MASTER_SR))   # -60 dB after RT60
    ir = np.random.default_rng(ROOM_SEED).standard_normal((ROOMS, 2, n)) * decay
    ir /= np.sqrt((ir ** 2).sum(axis=-1, keepdims=True))
    return np.fft.rfft(ir.astype(np.float32), size)


def render(plan, rng):
    """The 48 kHz stereo master of a plan: plan -> (2, duration * 48000) float32.

    Sources are panned (equal power) except the hiss, which is diffuse (its own noise per
    channel); the room then adds to each channel its own tail of the mix, so left and
    right decorrelate.
    """
    n = int(round(plan["duration"] * MASTER_SR))
    dry = np.zeros((2, n), np.float32)
    for ev in plan["events"]:
        if ev["keyword"] == "hiss":
            dry += np.stack([event_audio(ev, n, rng), event_audio(ev, n, rng)])
        else:
            angle = (ev["pan"] + 1) * np.pi / 4
            dry += np.array([[np.cos(angle)], [np.sin(angle)]], np.float32) * event_audio(ev, n, rng)
    size = 1 << int(np.ceil(np.log2(n + ROOM_LENGTH * MASTER_SR)))
    room = room_spectra(size)[rng.integers(ROOMS)]                      # (2, size // 2 + 1)
    wet = np.fft.irfft(np.fft.rfft(dry.mean(axis=0), size) * room, size)[:, :n]
    out = dry + ROOM_WET * wet.astype(np.float32)
    peak = np.abs(out).max()
    return out / peak * 0.95 if peak > 0.95 else out


# ----------------------------------------------------------------------------- text
def phrase(ev, with_level=False):
    """A noun phrase for an event: drum with count 3, pitch none -> 'three drum hits'."""
    kw, pitch = ev["keyword"], ev.get("pitch")
    level = ev["loudness"] + " " if with_level else ""
    if kw == "beep":
        n = ev["count"]
        return f"{NUMBER_WORDS[n]} {level}{pitch} beep" + ("s" if n > 1 else "")
    if kw == "drum":
        n = ev["count"]
        return f"{NUMBER_WORDS[n]} {level}drum hit" + ("s" if n > 1 else "")
    if kw == "plucked string":
        n = ev["count"]
        return f"a {level}{pitch} plucked string playing {NUMBER_WORDS[n]} note" + ("s" if n > 1 else "")
    if kw == "ticking":
        return f"{level}ticking"
    if kw in ("hum", "bell"):
        return f"a {level}{pitch} {kw}"
    return f"a {level}{kw}"


def arrange(parts, layout, template=0):
    """Join phrases by layout: (['a bell', 'a hum'], 'together') -> 'a bell together with a hum'."""
    if layout == "together":
        return parts[0] + (" together with ", " over ")[template % 2] + parts[1]
    if len(parts) == 1:
        return parts[0]
    joiner = (", then ", " followed by ")[template % 2] if len(parts) == 2 else ", then "
    return joiner.join(parts)


def short_caption(plan, rng=None):
    """'a loud high bell, then three drum hits'; with an rng the template and loudness words vary."""
    template = int(rng.integers(2)) if rng is not None else 0
    with_level = bool(rng.random() < 0.3) if rng is not None else False
    text = arrange([phrase(ev, with_level) for ev in plan["events"]], plan["layout"], template)
    return text[0].upper() + text[1:] + "."


def describe(ev):
    """One sentence on an event's acoustics: hum at 120 Hz -> 'The hum is loud and low, a steady tone at 120 Hz.'"""
    kw, level, pitch = ev["keyword"], ev["loudness"], ev.get("pitch")
    n = NUMBER_WORDS[ev.get("count", 0)]
    if kw == "hum":
        return f"The hum is {level} and {pitch}, a steady tone at {ev['f0']:.0f} Hz."
    if kw == "beep":
        return f"The beeps are {level} and {pitch}, {n} at {ev['f0']:.0f} Hz."
    if kw.endswith("siren"):
        a, b = ("400", "1600") if kw == "rising siren" else ("1600", "400")
        return f"The siren is {level} and sweeps from {a} to {b} Hz."
    if kw == "hiss":
        return f"The hiss is {level} and steady."
    if kw == "ticking":
        return f"The ticking is {level}, {ev['rate']} ticks per second."
    if kw == "plucked string":
        notes = ", ".join(f"{f:.0f}" for f in ev["notes"])
        return f"The plucked string is {level} and {pitch}, {n} notes at {notes} Hz."
    if kw == "bell":
        return f"The bell is {level} and {pitch}, struck once at {ev['f0']:.0f} Hz."
    return f"The drum is {level}, {n} hits."


def rich_caption(plan):
    """'Keywords: bell, drum\\nLayout: bell from 0.1 s to 1.4 s, then drum from ...\\nDescription: ...'."""
    evs = plan["events"]
    spans = [f"{ev['keyword']} from {ev['onset']:.1f} s to {ev['offset']:.1f} s" for ev in evs]
    return ("Keywords: " + ", ".join(ev["keyword"] for ev in evs) + "\n"
            + "Layout: " + arrange(spans, plan["layout"]) + "\n"
            + "Description: " + " ".join(describe(ev) for ev in evs))


def vague_prompt(plan):
    """The vague request this clip answers: beeps then drum -> 'an alarm, then a rhythm'."""
    family = {kw: vague for vague, kws in VAGUE.items() for kw in kws}
    return arrange([family[ev["keyword"]] for ev in plan["events"]], plan["layout"])


def questions(plan, rng):
    """Question-answer pairs with short exact answers: -> [('How many beeps are there?', '3'), ...]."""
    evs, qa = plan["events"], []
    present = [ev["keyword"] for ev in evs]
    absent = [k for k in KEYWORDS if k not in present]
    qa.append(("Which sounds do you hear, in order?", ", ".join(present)))
    for kw in (str(rng.choice(present)), str(rng.choice(absent))):
        qa.append((f"Is there a {kw}?", "yes" if kw in present else "no"))
    for ev in evs:
        kw = ev["keyword"]
        if kw in COUNTED:
            qa.append((f"How many {COUNTED[kw]} are there?", str(ev["count"])))
        if kw in PITCH_RANGE:
            qa.append((f"Is the {kw} low or high?", ev["pitch"]))
        if kw.endswith("siren"):
            qa.append(("Is the siren rising or falling?", kw.split()[0]))
        if kw == "ticking":
            qa.append(("How many ticks per second?", str(ev["rate"])))
        qa.append((f"Is the {kw} loud or quiet?", ev["loudness"]))
    if len(evs) >= 2:
        a, b = [evs[i] for i in rng.permutation(len(evs))[:2]]
        together = plan["layout"] == "together"
        qa.append((f"Do the {a['keyword']} and the {b['keyword']} play at the same time?",
                   "yes" if together else "no"))
        if not together:
            first = a if a["onset"] < b["onset"] else b
            qa.append((f"Which comes first, the {a['keyword']} or the {b['keyword']}?", first["keyword"]))
    return qa


# ----------------------------------------------------------------------------- flaws
def flaw(plan, rng):
    """A flawed realisation of a plan and the critique that names the flaw and the fix.

    plan 'a bell, then a drum' -> ('order swapped', flawed plan, 'Plan: ... Heard: ... Problem: the bell
    and the drum are in the wrong order. Fix: play the bell first, then the drum.'); None when the
    plan is a single uncounted event (nothing to get wrong in this list).
    """
    evs, layout = plan["events"], plan["layout"]
    counted = [ev for ev in evs if ev["keyword"] in COUNTED]
    kinds = ([] if layout in ("single", "together") else ["order swapped"]) \
        + (["event missing"] if len(evs) >= 2 else []) \
        + (["overlap instead of sequence"] if layout == "sequence" else []) \
        + (["wrong count"] if counted else [])
    if not kinds:
        return None
    kind = str(rng.choice(kinds))
    names = [ev["keyword"] for ev in evs]
    order = f"play the {', then the '.join(names)}" if layout != "together" else \
        f"play the {names[0]} together with the {names[1]}"
    new_layout, new_events = layout, [dict(ev) for ev in evs]
    if kind == "order swapped":
        i = int(rng.integers(len(evs) - 1))
        new_events[i], new_events[i + 1] = new_events[i + 1], new_events[i]
        problem = f"the {names[i]} and the {names[i + 1]} are in the wrong order"
        fix = order
    elif kind == "event missing":
        i = int(rng.integers(len(evs)))
        del new_events[i]
        new_layout = {"sequence3": "sequence"}.get(layout, "single")
        problem, fix = f"the {names[i]} is missing", f"add the {names[i]}: {order}"
    elif kind == "overlap instead of sequence":
        new_layout = "together"
        problem = f"the {names[0]} and the {names[1]} play together instead of one after the other"
        fix = order
    else:
        ev = counted[int(rng.integers(len(counted)))]
        wrong = int(rng.choice([c for c in range(1, MAX_COUNT + 1) if c != ev["count"]]))
        i = evs.index(ev)
        new_events[i]["count"] = wrong
        if ev["keyword"] == "plucked string":
            new_events[i]["notes"] = ev["notes"][:wrong] if wrong < ev["count"] else \
                sample_notes(ev["pitch"], wrong, rng)
        unit = COUNTED[ev["keyword"]]
        problem = f"there are {wrong} {unit} instead of {ev['count']}"
        fix = f"play exactly {ev['count']} {unit}"
    flawed = {"duration": plan["duration"], "layout": new_layout,
              "events": place(new_events, new_layout, plan["duration"], rng)}
    critique = (f"Plan: {short_caption(plan)} Heard: {short_caption(flawed)} "
                f"Problem: {problem}. Fix: {fix}.")
    return kind, flawed, critique


# ----------------------------------------------------------------------------- text-only
NAMES = ("Tom", "Ana", "Lee", "Mia", "Sam")
ITEMS = ("bells", "drums", "whistles", "strings", "clocks")


def arithmetic_task(rng):
    """A small word problem with an exact integer answer: -> ('Tom has 3 bells and buys 4 more. ...', '7')."""
    name, item = str(rng.choice(NAMES)), str(rng.choice(ITEMS))
    a, b = int(rng.integers(2, 10)), int(rng.integers(1, 10))
    kind = int(rng.integers(4))
    if kind == 0:
        return f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have?", str(a + b)
    if kind == 1:
        a += b
        return f"{name} has {a} {item} and gives {b} away. How many {item} are left?", str(a - b)
    if kind == 2:
        return f"{name} has {a} boxes with {b} {item} in each. How many {item} is that?", str(a * b)
    return f"{name} shares {a * b} {item} equally among {a} friends. How many does each friend get?", str(b)


# ----------------------------------------------------------------------------- analysis
N_FFT, N_FFT_LOW, HOP = 1024, 2048, 160   # 64 ms / 128 ms windows, 10 ms hop, at 16 kHz
FRAME = HOP / LM_SR
PEAK_FLOOR_DB = -5.0       # spectral peaks below this (dB of |STFT|^2) are ignored
PEAK_PROMINENCE_DB = 15.0  # a peak must stand this far above the bins 4 away on both sides
LINK_OCTAVES = 0.04        # a peak continues a track if within this many octaves of it
DRUM_BAND, DRUM_FLOOR_DB, DRUM_DECAY_DB, DRUM_RISE_DB = (35.0, 85.0), 21.0, 10.0, 10.0
HISS_BAND, HISS_FLOOR_DB = (2000.0, 6000.0), -12.0
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
