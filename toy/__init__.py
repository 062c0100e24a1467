"""The toy world: a synthetic audio world small enough to train UALM on a laptop CPU.

world.py draws plans of sound events, renders them to 48 kHz stereo and describes them in
text (captions, rich captions, questions, vague prompts, flawed clips with critiques);
analyzer.py reads a 16 kHz clip back into events from the same definitions, never learned,
and so judges what the model wrote. Neither is part of UALM: they stand where real data and
human raters stand.
"""
