"""Bag-of-words → sublinear TF-IDF, fitted on train, reproducible at serving time from JSON.

Tokenization is scikit-learn's CountVectorizer analyzer (imported when first used: loading a featurizer to
serve it does not import scikit-learn); the vocabulary is fitted from term counts
(`TermCounts`: document and term frequencies, which blocks of a corpus count separately and merge),
with CountVectorizer's own rules (min_df, max_df, max_features, alphabetical order; ties at max_features kept in
alphabetical order on any CPU, `select_terms`), so one process and
many (data/prepare_ray.py) fit the same vocabulary. The TF-IDF transform is written out here (a few
lines) so that `vocab.json` alone (terms + idf) featurizes new text identically, with nothing pickled.
Every transform is row by row: a block of documents gives the rows the whole corpus would.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp

from corrhash.errors import DataError

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's default: words of two or more characters
NORMALIZATION = "NFC"


def normalize_text(text: str) -> str:
    """Lower-case, then Unicode NFC: "café" typed composed (U+00E9) or decomposed (e + U+0301) is one term,
    whichever form a corpus or a query arrives in. NFC (not NFKC) leaves Latin-1 text as it is."""
    return unicodedata.normalize(NORMALIZATION, text.lower())


@dataclass(frozen=True)
class TfidfRecipe:
    max_features: int = 10_000
    """Keep this many most frequent terms (counted on train)."""
    max_df: float = 0.8
    """Drop terms in more than this fraction of train documents."""
    min_df: int = 3
    """Drop terms in fewer than this many train documents."""
    stop_words: str | None = "english"
    """Stop-word list removed before counting: scikit-learn's 'english'; --no-stop-words keeps them (None)."""
    min_tokens: int = 6
    """Drop documents with fewer counted (in-vocabulary) tokens than this."""
    max_tokens: int = 500
    """Drop documents with more counted tokens than this."""
    norm: Literal["l2", "none"] = "l2"
    """Row normalization of the TF-IDF vectors: 'l2' or 'none'."""


def analyzer(recipe: TfidfRecipe):
    """text -> its counted tokens (normalized, tokenized, stop words removed), as CountVectorizer counts them."""
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(token_pattern=TOKEN_PATTERN, preprocessor=normalize_text,
                           stop_words=recipe.stop_words).build_analyzer()


@dataclass
class TermCounts:
    """Document and term frequencies of the terms of some documents: vocabulary-sized, whatever the number
    of documents. Counts of blocks merge (`+=`) into the counts of their union."""

    n_docs: int = 0
    df: Counter = field(default_factory=Counter)
    tf: Counter = field(default_factory=Counter)

    def add(self, texts, analyze) -> "TermCounts":
        for text in texts:
            tokens = analyze(text)
            self.tf.update(tokens)
            self.df.update(set(tokens))
            self.n_docs += 1
        return self

    def __iadd__(self, other: "TermCounts") -> "TermCounts":
        self.n_docs += other.n_docs
        self.df.update(other.df)
        self.tf.update(other.tf)
        return self

    def to_columns(self) -> dict:
        """Plain columns (terms, df, tf, n_docs) that travel between processes without pickling objects."""
        terms = list(self.df)
        return {"terms": terms, "df": [self.df[t] for t in terms], "tf": [self.tf[t] for t in terms],
                "n_docs": self.n_docs}

    @classmethod
    def from_columns(cls, columns: dict) -> "TermCounts":
        return cls(int(columns["n_docs"]), Counter(dict(zip(columns["terms"], map(int, columns["df"])))),
                   Counter(dict(zip(columns["terms"], map(int, columns["tf"])))))


def select_terms(counts: TermCounts, recipe: TfidfRecipe) -> list[str]:
    """The vocabulary CountVectorizer(min_df, max_df, max_features).fit keeps, from merged counts: terms within
    the document-frequency bounds; above max_features, the most frequent (by term count), terms of equal count
    taken in alphabetical order; returned in alphabetical order.

    The ties are broken by a stable sort, where CountVectorizer uses numpy's default one: that sort is unstable and
    dispatched by CPU (AVX2, AVX-512) and numpy version, so which tied terms it keeps differs between machines. On
    20 Newsgroups 449 terms tie at the 10,000th count and 120 of them are kept: the vocabulary, the documents too
    short to keep and every number after them depended on the CPU that prepared the corpus."""
    if not counts.df:
        raise ValueError("empty vocabulary; perhaps the documents only contain stop words")
    n_doc = counts.n_docs
    high = recipe.max_df if isinstance(recipe.max_df, Integral) else recipe.max_df * n_doc
    low = recipe.min_df if isinstance(recipe.min_df, Integral) else recipe.min_df * n_doc
    if high < low:
        raise ValueError("max_df corresponds to < documents than min_df")
    terms = sorted(counts.df)
    dfs = np.fromiter((counts.df[t] for t in terms), dtype=np.int64, count=len(terms))
    mask = (dfs <= high) & (dfs >= low)
    limit = recipe.max_features
    if limit is not None and mask.sum() > limit:
        tfs = np.fromiter((counts.tf[t] for t in terms), dtype=np.int64, count=len(terms))
        chosen = np.flatnonzero(mask)[(-tfs[mask]).argsort(kind="stable")[:limit]]  # ties: alphabetical
        mask = np.zeros(len(terms), dtype=bool)
        mask[chosen] = True
    kept = [t for t, keep in zip(terms, mask) if keep]
    if not kept:
        raise ValueError("After pruning, no terms remain. Try a lower min_df or a higher max_df.")
    return kept


class TfidfFeaturizer:
    """Fitted vocabulary + idf. `transform(texts)` gives L2-normalized sublinear TF-IDF rows."""

    def __init__(self, terms: list[str], idf: np.ndarray | None = None, norm: str = "l2"):
        if norm not in ("l2", "none"):
            raise DataError(f"TF-IDF norm {norm!r}: use 'l2' or 'none'")
        self.terms = list(terms)
        self.norm = norm
        self.idf = None if idf is None else np.asarray(idf, dtype=np.float64)
        self._counter = None  # the CountVectorizer of `terms`, made on the first `counts`

    @classmethod
    def fit_vocabulary(cls, train_texts: list[str], recipe: TfidfRecipe) -> "TfidfFeaturizer":
        return cls.from_counts(TermCounts().add(train_texts, analyzer(recipe)), recipe)

    @classmethod
    def from_counts(cls, train_counts: TermCounts, recipe: TfidfRecipe) -> "TfidfFeaturizer":
        """The vocabulary fitted on the (merged) counts of the train documents; idf comes later (fit_idf)."""
        try:
            return cls(select_terms(train_counts, recipe), norm=recipe.norm)
        except ValueError as exc:  # "empty vocabulary" or max_df/min_df leaving no terms
            raise DataError(f"train split: cannot build a vocabulary ({exc})") from exc

    @property
    def n_features(self) -> int:
        return len(self.terms)

    def counts(self, texts: list[str]) -> sp.csr_matrix:
        if self._counter is None:
            from sklearn.feature_extraction.text import CountVectorizer

            self._counter = CountVectorizer(vocabulary=self.terms, token_pattern=TOKEN_PATTERN,
                                            preprocessor=normalize_text, dtype=np.int32)
        return self._counter.transform(texts).tocsr()

    def document_frequencies(self, counts: sp.csr_matrix) -> np.ndarray:
        """Documents per term of a block of count rows; blocks' frequencies add up."""
        return np.bincount(counts.indices, minlength=self.n_features)

    def fit_idf(self, train_counts: sp.csr_matrix) -> None:
        self.fit_idf_from(self.document_frequencies(train_counts), train_counts.shape[0])

    def fit_idf_from(self, df: np.ndarray, n_docs: int) -> None:
        """Smoothed idf, as scikit-learn's TfidfTransformer: ln((1 + n) / (1 + df)) + 1."""
        self.idf = np.log((1.0 + n_docs) / (1.0 + np.asarray(df))) + 1.0

    def tfidf(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        if self.idf is None:
            raise RuntimeError("fit_idf must run before tfidf")
        out = counts.astype(np.float64).tocsr()
        out.sort_indices()
        out.data = (1.0 + np.log(out.data)) * self.idf[out.indices]
        if self.norm == "l2":
            norms = np.sqrt(np.asarray(out.multiply(out).sum(axis=1)).ravel())
            norms[norms == 0] = 1.0
            out = sp.diags(1.0 / norms) @ out
        out = out.astype(np.float32).tocsr()
        out.sort_indices()
        return out

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        return self.tfidf(self.counts(list(texts)))

    def to_json(self) -> dict:
        return {"format": "corrhash-tfidf-v1", "token_pattern": TOKEN_PATTERN, "lowercase": True,
                "unicode_normalization": NORMALIZATION, "sublinear_tf": True, "norm": self.norm, "terms": self.terms,
                "idf": None if self.idf is None else [float(v) for v in self.idf]}

    @classmethod
    def from_json(cls, payload: dict, source: str = "vocab.json") -> "TfidfFeaturizer":
        if payload.get("format") != "corrhash-tfidf-v1" or payload.get("terms") is None:
            raise DataError(f"{source}: holds no text featurizer (format {payload.get('format')!r})")
        if payload.get("token_pattern") != TOKEN_PATTERN:
            raise DataError(f"{source}: token pattern {payload.get('token_pattern')!r} is not supported")
        # Files written before normalization was recorded were fitted on the same (composed) text.
        if payload.get("unicode_normalization", NORMALIZATION) != NORMALIZATION:
            raise DataError(f"{source}: unicode_normalization {payload['unicode_normalization']!r} is not "
                            f"supported (only {NORMALIZATION})")
        terms, idf = payload["terms"], payload.get("idf")
        if idf is not None:
            try:
                values = np.asarray(idf, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{source}: idf must be a list of numbers ({exc})") from exc
            if values.shape != (len(terms),) or not np.isfinite(values).all() or (values <= 0).any():
                raise DataError(f"{source}: idf must hold one finite positive number per term ({len(terms)})")
        return cls(terms, idf, payload.get("norm", "l2"))

    @classmethod
    def load(cls, path: Path) -> "TfidfFeaturizer":
        return cls.from_json(json.loads(Path(path).read_text()), str(path))

