"""The toy world (SPEC.md section 11), the stand-in for UALM's real training data: nine
sound events, four layouts, exact labels.

Every clip is drawn from a plan (its ground truth), rendered at 48 kHz stereo with a
decorrelated room, and described in text: short caption, rich caption (Keywords /
Layout / Description), question-answer pairs, a vague prompt, and a flawed
realisation with its critique. Clip i depends only on (seed, i).

    plan = make_plan(seed=0, index=7)
    master = render(plan, np.random.default_rng([0, 7, 1]))   # (2, N) float32, 48 kHz

The analyzer (analyzer.py) reads a 16 kHz mono waveform back into events using only
these definitions.
"""
import functools

import numpy as np

MASTER_SR = 48000                 # master audio: 48 kHz stereo
LM_SR = 16000                     # what the codec / encoder / analyzer see: 16 kHz mono
MAX_COUNT = 4                     # beeps, notes and hits come 1..4 times: few enough to count by ear
# the nine events of SPEC section 11, each defined by its sound in event_audio
KEYWORDS = ("hum", "beep", "rising siren", "falling siren", "hiss", "ticking",
            "plucked string", "bell", "drum")
COUNTED = {"beep": "beeps", "plucked string": "notes", "drum": "drum hits"}  # counted events -> their unit's plural
PITCH_RANGE = {"hum": (100.0, 200.0), "beep": (1000.0, 2500.0),
               "plucked string": (150.0, 600.0), "bell": (400.0, 900.0)}
PITCH_BAND = 0.4                  # "low" = lowest 40% of the log range, "high" = top 40%
SIREN_LOW, SIREN_HIGH = 400.0, 1600.0     # Hz a siren sweeps between: two octaves, well inside 8 kHz
BELL_PARTIALS = (1.0, 2.0, 2.76, 5.4)     # a bell's inharmonic partials, as multiples of f0
LEVEL_DB = {"loud": -6.0, "quiet": -18.0}  # gain of an event's source: 12 dB apart, plainly loud vs quiet

# layout -> (number of events, shortest clip in s); a clip is 2..5 s long
LAYOUTS = {"single": (1, 2.0), "sequence": (2, 3.0), "together": (2, 2.0),
           "sequence3": (3, 4.2)}
MAX_DURATION = 5.0                # s, the longest clip
MARGIN, GAP = 0.1, 0.2            # s of silence at the clip edges / between sequence slots
UNIT_PERIOD = (0.3, 0.5)          # s between beeps / notes / hits (ticking is faster)
BEEP_LENGTH = (0.1, 0.25)         # s per beep
TICK_RATE = (4, 8)                # clicks per second
NOTE_LENGTH, NOTE_TAU = 0.45, 0.12  # s a plucked note lasts at most / its decay time constant
HIT_LENGTH, HIT_TAU = 0.3, 0.08     # s a drum hit lasts at most / its decay time constant
BELL_RING, BELL_TAU = 1.5, 0.5      # s a bell rings at most / its fundamental's decay time constant
FADE = 0.005                      # s of linear fade-out at every cut, so cuts do not click
BEEP_FADE = 0.01                  # s of fade at both ends of a beep
STEADY_FADE = 0.02                # s of fade-in/out of steady sounds (a softer edge splatters less)
# the room: s to decay by 60 dB, s of tail kept, gain of the wet signal (a small, dry room, so events stay apart)
ROOM_RT60, ROOM_LENGTH, ROOM_WET = 0.25, 0.3, 0.15
ROOMS, ROOM_SEED = 8, 1234       # a fixed bank of rooms; each clip draws one
# pairs too alike to play at once and still be told apart (choice)
NOT_TOGETHER = ({"rising siren", "falling siren"}, {"ticking", "hiss"})

# vague request -> the keywords it may stand for (the enrichment task's prompts)
VAGUE = {"an alarm": ("beep", "rising siren", "falling siren"),
         "something calm": ("hum", "bell"),
         "a rhythm": ("drum", "ticking"),
         "a little melody": ("plucked string",),
         "a steady noise": ("hiss",)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")  # counts 0..MAX_COUNT as captions write them


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
        if kw.endswith("siren") and sum(k.endswith("siren") for k in present) == 1:  # with both, "the siren" is either
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
NAMES = ("Tom", "Ana", "Lee", "Mia", "Sam")                  # the people of the word problems
ITEMS = ("bells", "drums", "whistles", "strings", "clocks")  # and what they count


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
