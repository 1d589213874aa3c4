"""Self-Taught Hashing (STH): Zhang, Wang, Cai and Lu, "Self-Taught Hashing for Fast
Similarity Search", SIGIR 2010.

Two stages, both fitted once on the train split (`trainable = False`):

1. Unsupervised codes of the train documents (the paper's first stage).
   * k-nearest-neighbour graph, cosine similarity: W_ij = cos(x_i, x_j) if i in N_k(j) or
     j in N_k(i), else 0 (the paper's local-similarity matrix). Edges carry the cosine, not 1,
     and pairs with cosine <= 0 (no shared word) are never edges, even when a document has
     fewer than k such pairs. Rows are L2-normalised, so cosine = dot product; a zero
     row has cosine 0 with everything. The graph is the corpus's cached document graph
     (train/neighbours.py: searched once, shared with the -nbr models and every trial), else
     models/graph.py's exact search when the model is fitted on rows alone.
   * Laplacian eigenmap: L y = lambda D y with L = D - W; the `bits` eigenvectors
     of smallest lambda after the trivial constant one. Solved as the largest eigenvectors u
     of N = D^-1/2 W D^-1/2 (lambda = 1 - mu) with scipy's eigsh (ARPACK, seeded v0), then
     y = D^-1/2 u, so that y^T D y = 1 as in scipy.linalg.eigh(L, D).
   * Each bit thresholded at its median over the train documents.

2. Out-of-sample extension (the second stage): one linear SVM per bit, trained on the train
   TF-IDF rows to predict that bit; an unseen document's bit is 1 iff the SVM's decision
   value is > 0, so embed(x) = x @ coef + intercept with thresholds 0.

Choices and simplifications:
* The trivial eigenvector is removed by deflation (eigsh on N - 3 q q^T, q = D^1/2 1 /
  ||D^1/2 1||) rather than by dropping the first eigenvector found. The two agree on a
  connected graph; on a disconnected one (eigenvalue 1 repeated once per component), the
  deflation removes exactly the constant vector and keeps the component indicators, which
  are the most informative bits. The factor 3 pushes q to eigenvalue -2, below the whole
  spectrum of N (in [-1, 1]), so it can never be picked.
* Isolated nodes (no neighbour with cosine > 0, e.g. empty rows) have degree 0, where D^-1/2
  is undefined; they get D^-1/2 = 0, hence y = 0 in every bit: they fall on whichever side of
  the median 0 falls. The eigenproblem is only defined on the non-isolated part anyway.
* Graphs of at most DENSE_MAX nodes are solved densely (scipy.linalg.eigh on the n x n graph,
  never the corpus): exact, and ARPACK needs k < n with room for its Krylov basis.
* Eigenvector signs are arbitrary; each is flipped so its largest-|entry| (first such) is
  positive, so codes are deterministic. The basis inside a repeated eigenvalue is whatever
  ARPACK returns for the seeded v0 (deterministic, not canonical).
* Classifiers: LinearSVC (LIBLINEAR), i.e. the paper's linear SVM rather than
  LogisticRegression (a different loss), random_state = config.seed, C = config.svm_c (default 0.1). We use no
  C from the paper: 0.1 was picked on the val splits of 20 Newsgroups and Reuters among
  {0.1, 0.3, 1}; at 32 and 64 bits it beat LIBLINEAR's default C = 1 by 1.1-1.8 points of
  precision@100 on both and fits faster (fewer solver passes). The search space tunes it.
* dual=True (LIBLINEAR's default solver, dual coordinate descent) is explicit: scikit-learn's
  dual="auto" picks the primal Newton solver when n_docs > n_features, measured ~50x slower on
  20 Newsgroups (7.6 s vs 0.15 s for 8 bits) for the same convex problem.
* A bit that is constant over the train documents (possible only with heavy ties at the
  median) gets the constant classifier coef = 0, intercept = +-1: an SVM needs two classes.
* Unfitted, coef and intercept are 0, so every code is all zeros (encode still works).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from threadpoolctl import threadpool_limits
from torch import Tensor

from corrhash.models import register
from corrhash.models.base import HashModel, as_batch
from corrhash.models.config import ModelConfig
from corrhash.models.graph import knn_graph

DENSE_MAX = 200
"""graphs up to this many nodes are solved with a dense eigh instead of ARPACK"""
def laplacian_eigenmap(graph: sp.spmatrix, bits: int, seed: int, solver: str = "auto") -> np.ndarray:
    """[n, bits] solutions y of L y = lambda D y for the `bits` smallest lambda after the
    trivial one, ordered by increasing lambda, scaled to y^T D y = 1, signs fixed.
    solver: "dense", "arpack" or "auto" (dense up to DENSE_MAX nodes)."""
    w = sp.csr_matrix(graph, dtype=np.float64)
    n = w.shape[0]
    if n < bits + 1:
        raise ValueError(f"sth needs at least bits + 1 = {bits + 1} train documents, got {n}")
    degree = np.asarray(w.sum(axis=1)).ravel()
    if not (degree > 0).any():
        raise ValueError("sth: the kNN graph has no edge (no two train documents share a word)")
    inv_sqrt = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    normalized = (sp.diags(inv_sqrt) @ w @ sp.diags(inv_sqrt)).tocsr()
    q = np.sqrt(degree)
    q /= np.linalg.norm(q)
    if solver == "auto":
        solver = "dense" if n <= DENSE_MAX else "arpack"
    if solver == "dense":
        values, vectors = scipy.linalg.eigh(normalized.toarray() - 3.0 * np.outer(q, q))
        u = vectors[:, ::-1][:, :bits]
    elif solver == "arpack":
        operator = LinearOperator(
            (n, n), matvec=lambda v: normalized @ v - 3.0 * q * (q @ v), dtype=np.float64
        )
        v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        # ARPACK's BLAS calls are small (n x ncv): with several BLAS threads on a busy machine they
        # thrash; measured on 20ng (n = 10,481, 32 bits, 2 shared cores) 19 s -> 0.1 s single-threaded.
        with threadpool_limits(limits=1, user_api="blas"):
            values, vectors = eigsh(operator, k=bits, which="LA", v0=v0)
        u = vectors[:, np.argsort(-values, kind="stable")]
    else:
        raise ValueError(f"unknown solver {solver!r}")
    biggest = np.abs(u).argmax(axis=0)
    u = u * np.where(u[biggest, np.arange(bits)] < 0, -1.0, 1.0)
    return inv_sqrt[:, None] * u


def median_bits(y: np.ndarray) -> np.ndarray:
    """[n, bits] bool: each bit is 1 above its median over the train documents."""
    return y > np.median(y, axis=0)


@register("sth")
class STH(HashModel):
    trainable = False
    uses_graph = True
    search_space = {"neighbours": "randint:5:50", "svm_c": "loguniform:0.01:1"}

    def __init__(self, config: ModelConfig, n_features: int):
        super().__init__(config, n_features)
        # The per-bit SVMs as plain arrays: checkpoints with safetensors, nothing pickled.
        self.register_buffer("coef", torch.zeros(n_features, config.bits))
        self.register_buffer("intercept", torch.zeros(config.bits))
        self.fit_seconds: dict[str, float] = {}

    def loss(self, x: Tensor, generator: torch.Generator | None = None,
             neighbours: Tensor | None = None) -> dict[str, Tensor]:
        raise RuntimeError("sth is not trainable (trainable=False): it has no loss; use fit_closed_form()")

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        x = as_batch(x)
        if x.layout == torch.sparse_csr:
            return torch.sparse.mm(x, self.coef) + self.intercept
        return x @ self.coef + self.intercept

    def train_codes(self, features: sp.spmatrix, graph: sp.spmatrix | None = None) -> np.ndarray:
        """Stage 1 only: [n, bits] bool self-taught codes of the train documents. `graph`: their kNN graph with
        k = config.neighbours (the cached one the lifecycles pass), else searched here."""
        if features.shape[1] != self.n_features:
            raise ValueError(f"sth was built for {self.n_features} features, got {features.shape[1]}")
        if features.shape[0] < self.bits + 1:  # before the O(n^2) graph, not after
            raise ValueError(f"sth needs at least bits + 1 = {self.bits + 1} train documents, "
                             f"got {features.shape[0]}")
        started = time.perf_counter()
        if graph is None:
            graph = knn_graph(features, self.config.neighbours)
        elif graph.shape != (features.shape[0], features.shape[0]):
            raise ValueError(f"sth: the graph has {graph.shape[0]} nodes, the train split {features.shape[0]} rows")
        graphed = time.perf_counter()
        y = laplacian_eigenmap(graph, self.bits, self.config.seed)
        self.fit_seconds = {"graph": graphed - started, "eigenmap": time.perf_counter() - graphed}
        return median_bits(y)

    def fit_closed_form(self, features: sp.spmatrix, graph: sp.spmatrix | None = None) -> None:
        from sklearn.svm import LinearSVC  # only fitting needs scikit-learn; loading a model to serve it does not

        features = sp.csr_matrix(features)
        codes = self.train_codes(features, graph)
        started = time.perf_counter()
        coef = np.zeros((self.n_features, self.bits), dtype=np.float32)
        intercept = np.zeros(self.bits, dtype=np.float32)
        for bit in range(self.bits):
            target = codes[:, bit]
            if target.all() or not target.any():
                intercept[bit] = 1.0 if target.all() else -1.0
                continue
            svm = LinearSVC(C=self.config.svm_c, dual=True, random_state=self.config.seed).fit(features, target)
            coef[:, bit] = svm.coef_.ravel()
            intercept[bit] = svm.intercept_[0]
        self.fit_seconds["classifiers"] = time.perf_counter() - started
        self.coef.copy_(torch.from_numpy(coef))
        self.intercept.copy_(torch.from_numpy(intercept))
