"""Checkpoints of the audio models (codec.py, vae.py): a dataclass config and a state dict,
written atomically and read back with one clear error for each way a file can be wrong.

    save_checkpoint("runs/codec.pt", codec, step)   # {config, model, step}, via a .tmp file
    Codec.from_checkpoint("runs/codec.pt")          # = load_module(Codec, CodecConfig, ...)
"""

import os
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn as nn


def save_checkpoint(path, model: nn.Module, step: int) -> None:
    """Write {config, model, step} atomically: to path + '.tmp', then os.replace onto path.
    (The codec's and the VAE's; `model.config` is their dataclass.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": asdict(model.config), "model": model.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def load_module(cls, config_cls, path, config, name: str, how: str) -> nn.Module:
    """The model saved by save_checkpoint at path, in eval mode, or one clear error: the file
    missing, unreadable (truncated), another model's, written by an older version of the code
    (its config lacks a field), saved with a config other than `config` (when given), or
    holding weights that do not fit its own config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {name} checkpoint there; train one with `{how}` or fix the path.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable {name} checkpoint ({type(e).__name__}); it may be truncated, "
                         "retrain or re-copy it.") from None
    try:
        saved, state = config_cls(**ckpt["config"]), ckpt["model"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a {name} checkpoint (another model's?); pass the one `{how}` "
                         "wrote.") from None
    missing = [f.name for f in fields(config_cls) if f.name not in ckpt["config"]]
    if missing:  # the defaults of fields added since may not be what it was trained with
        raise ValueError(f"{path}: written by an older version of this code (its config has no "
                         f"{', '.join(missing)}); retrain it with `{how}`.")
    if config is not None and config != saved:
        diff = {f.name: (getattr(saved, f.name), getattr(config, f.name)) for f in fields(config_cls)
                if getattr(saved, f.name) != getattr(config, f.name)}
        raise ValueError(f"{path}: saved config differs from the requested one ({{field: (saved, "
                         f"requested)}}: {diff}); load without a config or retrain.")
    model = cls(saved)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ValueError(f"{path}: weights do not fit the saved config ({first}); the file was "
                         "edited, mixed up or written by an older version of this code; retrain it.") from None
    return model.eval()
