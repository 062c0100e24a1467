"""
Small helpers every part shares: how a script fails, how a file is written, and the
learning-rate schedule. They import nothing from the project, so any module may use them.
"""

import math
import os
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path


def fail(msg):
    """One clear sentence on stderr and a non-zero exit, no traceback: how every script
    answers bad input. e.g. fail("runs/sft.pt not found: run `python train.py --stage sft` first")."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


@contextmanager
def atomic_path(path):
    """Yield a temporary name beside `path`; when the block ends without an error it is renamed
    onto `path` in one step (os.replace), so a crash never leaves half a file where the last
    good one was. The folder is made if it is missing.

        with atomic_path("runs/gen.log.jsonl") as tmp, open(tmp, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in log)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def learning_rate(step, steps, peak, warmup=20):
    """Linear warm-up over `warmup` steps, then cosine decay to 10% of peak at `steps`; every
    model here (codec, VAE, CLAP, the LM, DPO) trains on it.
    e.g. (step 0 of 100, peak 1e-3, warmup 20) -> 5e-5; (step 19) -> 1e-3; (step 100) -> 1e-4."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pick(cls, d):
    """The entries of a config.json dict that are fields of the dataclass cls, lists as tuples
    (so configs compare equal). pick(AcousticConfig, {"hidden_size": 8, "n_codebooks": 9}) == {"hidden_size": 8}"""
    names = {f.name for f in fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
