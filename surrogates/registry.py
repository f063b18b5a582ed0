"""The built-in surrogates, and finding, building and loading a surrogate by its name.

Importing this module imports every built-in model module, and each model registers itself in
``surrogates.base.SURROGATES`` where it is defined (``class SASRec(Surrogate, name="sasrec")``). A
new model is one file plus its line here; nothing else names the models.
"""
from __future__ import annotations

from pathlib import Path

import surrogates.sasrec  # noqa: F401  (registers "sasrec"; the first, the default)
import surrogates.bert4rec  # noqa: F401  (registers "bert4rec")
import surrogates.dcrec  # noqa: F401  (registers "dcrec")
from dealrec_core.errors import DealrecError
from surrogates.base import CONFIG_FILE, SURROGATES, WEIGHTS_FILE, Surrogate, read_surrogate_config


def model_names() -> tuple[str, ...]:
    """Every registered surrogate, in registration order (the built-ins first, SASRec first of them)."""
    return SURROGATES.names()


def surrogate_class(name: str) -> type[Surrogate]:
    return SURROGATES.get(name)


def build_surrogate(name: str, **config_fields) -> Surrogate:
    cls = surrogate_class(name)
    return cls(cls.config_class(**config_fields))


def load_surrogate(model_dir: str | Path, map_location: str = "cpu") -> Surrogate:
    """Rebuild a surrogate from a folder written by ``save_surrogate``; returned in eval mode."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    name, fields = read_surrogate_config(model_dir)
    cls = surrogate_class(name)
    model = cls(cls.config_class.from_dict(fields))
    weights_path = model_dir / WEIGHTS_FILE
    state = load_file(str(weights_path), device=map_location)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:   # a tensor of another shape than the config gives
        raise DealrecError(f"{weights_path}: weights do not match {model_dir / CONFIG_FILE} "
                           f"({str(e).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise DealrecError(f"{weights_path}: weights do not match the config "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
