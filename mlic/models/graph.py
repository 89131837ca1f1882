"""Label graphs: the correlation matrix of ML-GCN, its normalisation, GCN and GAT layers.

The adjacency the label-graph heads use is built from P(j | i) (``mlic.data.stats``) in three
pure steps, all float64 NumPy so the numbers can be checked by hand:

1. ``binarize_correlation``: B_ij = 1 where P(j | i) >= tau (rare co-occurrences are noise).
2. ``reweight_correlation``: spread a weight ``p`` over the neighbours and add self-loops.
3. ``normalize_adjacency``: the symmetric normalisation used at forward time.

Steps 2 and 3 follow the released ML-GCN code (``util.gen_A`` / ``gen_adj``), which the paper's
graph branch (DOR ``gcn.py``) reuses unchanged; where that code differs from the ML-GCN paper
text, the paper's form is offered too. The layers are written from the formulas (Kipf & Welling
GCN, Velickovic et al. single-head GAT) with the initialisations the reference uses.

``GraphOutputCache`` keeps an image-independent graph output (channel weights, classifier weights)
across eval-mode forwards and drops it as soon as any tensor it was computed from changes.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlic.errors import ConfigError

REWEIGHT_MODES = ("reference", "paper")


def binarize_correlation(conditional: np.ndarray, tau: float = 0.4) -> np.ndarray:
    """B_ij = 1 if P(j | i) >= tau else 0 (float64). ``conditional`` has a zero diagonal, so B has too."""
    conditional = np.asarray(conditional, dtype=np.float64)
    if conditional.ndim != 2 or conditional.shape[0] != conditional.shape[1]:
        raise ValueError(f"a correlation matrix must be square, got shape {conditional.shape}")
    return (conditional >= tau).astype(np.float64)


def reweight_correlation(binary: np.ndarray, p: float = 0.25, mode: str = "reference") -> np.ndarray:
    """Re-weight a binary correlation matrix so a node does not drown in its neighbours.

    ``mode="reference"`` (the released ML-GCN and DOR code, the default):
        A' = p * B / (column sums of B + 1e-6) + I
    i.e. B_ij is divided by sum_k B_kj, and every diagonal entry is 1.

    ``mode="paper"`` (ML-GCN paper, eq. 8, where p = 0.2): row-wise
        A'_ij = p * B_ij / sum_{k != i} B_ik  (i != j),   A'_ii = 1 - p,
    and a node without neighbours keeps A'_ii = 1 (the formula is undefined there).
    """
    b = np.asarray(binary, dtype=np.float64)
    c = b.shape[0]
    if mode == "reference":
        return p * b / (b.sum(axis=0, keepdims=True) + 1e-6) + np.eye(c)
    if mode == "paper":
        b = b * (1.0 - np.eye(c))
        rows = b.sum(axis=1, keepdims=True)
        spread = np.divide(p * b, rows, out=np.zeros_like(b), where=rows > 0)
        return spread + np.diag(np.where(rows[:, 0] > 0, 1.0 - p, 1.0))
    raise ValueError(f"mode must be one of {REWEIGHT_MODES}, got {mode!r}")


def normalize_adjacency(a: np.ndarray) -> np.ndarray:
    """Â = D A^T D with D = diag(rowsum(A)^-1/2), as ML-GCN's ``gen_adj``.

    Note the transpose and that D uses the row sums of A (not of A^T): for the non-symmetric A'
    above this is not the textbook D^-1/2 A D^-1/2; we keep the reference form so trained graphs
    behave the same. A row summing to 0 (impossible with self-loops) gets weight 0, not inf.
    """
    a = np.asarray(a, dtype=np.float64)
    rows = a.sum(axis=1)
    d = np.divide(1.0, np.sqrt(rows), out=np.zeros_like(rows), where=rows > 0)
    return d[:, None] * a.T * d[None, :]


def label_adjacency(conditional: np.ndarray, tau: float = 0.4, p: float = 0.25,
                    mode: str = "reference") -> np.ndarray:
    """The normalised adjacency Â of a conditional co-occurrence matrix: the three steps above."""
    return normalize_adjacency(reweight_correlation(binarize_correlation(conditional, tau), p, mode))


class GraphConvolution(nn.Module):
    """One GCN layer, Â X W, no bias; W ~ U(-1/sqrt(out), 1/sqrt(out)) as the reference."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(out_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return adjacency @ (x @ self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[0]}, out_features={self.weight.shape[1]}"


class GraphAttention(nn.Module):
    """A single-head GAT layer: h'_i = ELU(sum_j alpha_ij W h_j) over the edges of the graph.

    e_ij = LeakyReLU_alpha(a1 . Wh_i + a2 . Wh_j), kept only where Â_ij > 0 (the self-loops of
    ``reweight_correlation`` guarantee every row has an edge), softmax over j, dropout on the
    attention while training. W and a are xavier-uniform with gain 1.414, as the reference GAT.
    """

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.1, alpha: float = 0.2):
        super().__init__()
        self.dropout = float(dropout)
        self.alpha = float(alpha)
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(in_features, out_features),
                                                           gain=1.414))
        # a = [a1; a2] as one (2*out, 1) tensor, initialised as a whole like the reference.
        self.attention_vector = nn.Parameter(nn.init.xavier_uniform_(
            torch.empty(2 * out_features, 1), gain=1.414))

    def attention(self, wh: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """alpha (C, C) before dropout: rows sum to 1, zero where Â_ij <= 0."""
        out = wh.shape[1]
        source = wh @ self.attention_vector[:out]        # (C, 1): a1 . Wh_i
        target = wh @ self.attention_vector[out:]        # (C, 1): a2 . Wh_j
        scores = F.leaky_relu(source + target.T, self.alpha)
        # The dtype's lowest value, not -inf: a row without any edge then gets a uniform softmax
        # instead of NaN, and the exported graph holds a finite constant.
        scores = scores.masked_fill(adjacency <= 0, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=1)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        wh = x @ self.weight
        alpha = F.dropout(self.attention(wh, adjacency), self.dropout, training=self.training)
        return F.elu(alpha @ wh)

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[0]}, out_features={self.weight.shape[1]}, "
                f"dropout={self.dropout}, alpha={self.alpha}")


class GraphOutputCache:
    """Keeps an image-independent graph output (channel weights, classifier weights) in eval.

    ``get`` recomputes while training, and while autograd needs the graph (grad enabled and a
    source requires grad: eval-mode fine-tuning still trains the graph). Otherwise it returns the
    cached value, valid while every source tensor still has the storage, dtype, device and in-place
    version counter it had: an optimizer step, an EMA update or ``load_state_dict`` (in-place ops)
    bump the version; ``.to()``, ``.half()`` or a ``.data`` swap give new storage. The cache holds
    a detached alias of each source, so an old storage stays alive and its address cannot be
    reused by a new tensor that would then look unchanged. Writes through ``param.data`` are
    invisible to version counters: call ``clear()`` after those.

    A plain attribute, not a buffer: never saved, emptied by deepcopy/pickle (an EMA copy starts
    clean), and a model traced in eval (torch.jit.trace, the TorchScript ONNX exporter) records
    the value as a constant.
    """

    def __init__(self) -> None:
        self._sources: list[tuple[torch.Tensor, int]] = []
        self._value: torch.Tensor | None = None

    def _valid(self, sources: list[torch.Tensor]) -> bool:
        return self._value is not None and len(sources) == len(self._sources) and all(
            # No shape test: sizes are traced values under torch.jit.trace (a TracerWarning), and a
            # new shape over the same live storage would take a deliberate .data swap to a view.
            t.data_ptr() == alias.data_ptr() and t._version == version and t.dtype == alias.dtype
            and t.device == alias.device
            for t, (alias, version) in zip(sources, self._sources))

    def get(self, sources: list[torch.Tensor], compute: Callable[[], torch.Tensor],
            training: bool) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in sources)
        if training or (needs_grad and not torch.jit.is_tracing()):
            return compute()
        try:
            if self._valid(sources):
                return self._value
            versions = [t._version for t in sources]
        except RuntimeError:  # inference-mode or fake (torch.export) tensors: nothing to key on
            return compute()
        # Outside inference mode and autograd, so the cached tensor is an ordinary constant that
        # later grad-enabled forwards may use, whatever mode the first call ran in.
        with torch.inference_mode(False), torch.no_grad(), _not_traced():
            self._value = compute()
            self._sources = [(t.detach(), v) for t, v in zip(sources, versions)]
        return self._value

    def clear(self) -> None:
        self._sources, self._value = [], None

    def __deepcopy__(self, memo: dict) -> GraphOutputCache:
        return GraphOutputCache()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()


@contextlib.contextmanager
def _not_traced():
    """Pause torch.jit tracing (ONNX's TorchScript exporter too), so a value cached during a trace
    is recorded as a constant on every call, not as graph ops on the first call only."""
    get = getattr(torch._C, "_get_tracing_state", None)
    state = get() if get is not None else None
    if state is not None:
        torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        if state is not None:
            torch._C._set_tracing_state(state)


def full_precision(device: torch.device):
    """Autocast off: the graph is a few small matmuls, and fp32 keeps train and eval outputs equal."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class LabelNodes(nn.Module):
    """The label graph a head runs on: node features ``embeddings`` (C, E) and adjacency Â (C, C).

    Both are stored in the state dict, so a saved model carries its graph. Built from a
    ``LabelContext`` when training starts; a model rebuilt from its config gets zero placeholders
    of the same shapes (hence ``embedding_dim``), which ``load_state_dict`` fills. Using a graph
    that was never filled raises instead of silently running on zeros.

    ``learned_embeddings=True`` makes the node features a trainable Parameter (for labels without
    meaningful names; start from one-hot vectors, embedding source "learned").
    """

    def __init__(self, num_classes: int, label_context=None, embedding_dim: int = 384,
                 tau: float = 0.4, p: float = 0.25, learned_embeddings: bool = False):
        super().__init__()
        adjacency = torch.zeros(num_classes, num_classes)
        embeddings = torch.zeros(num_classes, embedding_dim)
        if label_context is not None:
            check_label_context(label_context, num_classes, embedding_dim, learned_embeddings)
            adjacency = torch.from_numpy(label_adjacency(label_context.conditional, tau, p)).float()
            embeddings = torch.from_numpy(np.asarray(label_context.embeddings, dtype=np.float32).copy())
        self.register_buffer("adjacency", adjacency)
        if learned_embeddings:
            self.embeddings = nn.Parameter(embeddings)
        else:
            self.register_buffer("embeddings", embeddings)
        self.filled = label_context is not None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "adjacency" in state_dict:
            self.filled = True

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.filled:
            raise ConfigError("this label-graph head has no graph: build the model with a "
                              "label_context (mlic.engine.label_context.build_label_context) "
                              "or load saved weights into it")
        return self.embeddings, self.adjacency


def check_label_context(context, num_classes: int, embedding_dim: int,
                        learned_embeddings: bool = False) -> None:
    """Raise a ConfigError saying what to set when a LabelContext does not fit a graph head."""
    if len(context.label_names) != num_classes or np.shape(context.conditional) != (num_classes,) * 2:
        raise ConfigError(f"label context has {len(context.label_names)} labels and a "
                          f"{np.shape(context.conditional)} correlation matrix; the model has "
                          f"{num_classes} classes")
    if context.embeddings is None:
        raise ConfigError("a label-graph head needs label embeddings: build the label context with "
                          "an embedding source (minilm, glove:<path>, onehot or learned)")
    shape = np.shape(context.embeddings)
    if shape[0] != num_classes:
        raise ConfigError(f"label embeddings have {shape[0]} rows for {num_classes} classes")
    if shape[1] != embedding_dim:
        raise ConfigError(f"label embeddings ({context.embedding_source or 'given'}) are {shape[1]}-d "
                          f"but the head expects embedding_dim={embedding_dim}: set "
                          f"model.head_params.embedding_dim: {shape[1]}")
    if context.embedding_source == "learned" and not learned_embeddings:
        raise ConfigError("embedding source 'learned' trains the node features: set "
                          "model.head_params.learned_embeddings: true")
