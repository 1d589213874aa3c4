"""The neighbourhood part of `BinaryCodeVAE` (models/binary_vae.py), beside the posterior and prior parts: the
document graph (models/graph.py) enters the loss, so any binary VAE learns which documents are neighbours, as
STH does. Codes still come from the encoder alone: serving a new query needs no graph.

NeighbourReconstruction follows PairRec (Hansen, Hansen, Simonsen, Alstrup and Lioma, "Unsupervised Semantic
Hashing with Pairwise Reconstruction", SIGIR 2020). PairRec trains on weakly supervised pairs (d, d'), d' one of
d's top-k neighbours, and asks one decoder to reconstruct d from both codes: from z_d (the usual term) and from
z_d' (the pairwise term), so that neighbours' codes carry each other's words. Here, per document x_i of a batch:

    loss_i = -log p(x_i | s_i) + lambda * -log p(x_j | s_i) + kl_weight * KL_i,   j ~ Uniform(N(i))

with log p(x | s) the sum over x's present words of the softmax decoder's log-probabilities (the same decoder,
the same noisy code s_i), N(i) i's neighbours in the symmetric graph and lambda = `neighbour_weight`.

Simplifications, and why:
- The pairwise term decodes the neighbour's words from the document's own code instead of the document's words
  from the neighbour's code. Over a symmetric graph both pull the same pairs of codes towards each other's words,
  and this one costs a gather on log-probabilities already computed: no second encoder pass, no second KL.
- Neighbours come from the cosine TF-IDF kNN graph (STH's), not from BM25 rankings over the corpus: the graph is
  built once per corpus and shared with STH's search; j is drawn uniformly from N(i) each step (PairRec samples
  pairs uniformly from the top-k).
- PairRec's learned per-word importance weights in the decoder are not used: every VAE here shares one decoder.
- A document without neighbours (no shared word with any other) has no pairwise term.

SNUH (Ou et al., ACL 2021) goes further: a posterior that correlates neighbours' codes through a spanning-tree
approximation of the graph. It is not implemented: faithfully it changes the posterior over pairs of documents,
which the one-document-at-a-time posterior parts here do not express.
"""

from __future__ import annotations

from torch import Tensor

from corrhash.models.base import present_word_log_likelihood
from corrhash.models.space import NEIGHBOUR_SPACE


class NeighbourReconstruction:
    """List first among a VAE's bases: `uses_neighbours` makes the epoch loop pair each batch with neighbours."""

    uses_neighbours = True
    uses_graph = True
    neighbour_space = NEIGHBOUR_SPACE

    def neighbour_term(self, log_probs: Tensor, neighbours: Tensor) -> Tensor:
        """Per document: -log p(x_j | s_i), the sampled neighbour's present words under the document's decoder
        output (`log_probs` [B, V]); `neighbours` is the [B, V] CSR batch of the neighbours' rows (an empty row
        for a document without neighbours gives 0)."""
        return -present_word_log_likelihood(log_probs, neighbours)
