"""Bag-of-words → sublinear TF-IDF, fitted on train, reproducible at serving time from JSON.

The vocabulary comes from scikit-learn's CountVectorizer; the TF-IDF transform is written out
here (a few lines) so that `vocab.json` alone (terms + idf) featurizes new text identically,
with nothing pickled.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer

from corrhash.cli import CLI
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
    stop_words: str | None = field(default="english", metadata={CLI: {
        "flags": ["--no-stop-words"], "action": "store_const", "const": None}})
    """Stop-word list removed before counting: scikit-learn's 'english'; --no-stop-words keeps them (None)."""
    min_tokens: int = 6
    """Drop documents with fewer counted (in-vocabulary) tokens than this."""
    max_tokens: int = 500
    """Drop documents with more counted tokens than this."""
    norm: str = field(default="l2", metadata={CLI: {"choices": ("l2", "none")}})
    """Row normalization of the TF-IDF vectors: 'l2' or 'none'."""


class TfidfFeaturizer:
    """Fitted vocabulary + idf. `transform(texts)` gives L2-normalized sublinear TF-IDF rows."""

    def __init__(self, terms: list[str], idf: np.ndarray | None = None, norm: str = "l2"):
        if norm not in ("l2", "none"):
            raise DataError(f"TF-IDF norm {norm!r}: use 'l2' or 'none'")
        self.terms = list(terms)
        self.norm = norm
        self.idf = None if idf is None else np.asarray(idf, dtype=np.float64)
        self._counter = CountVectorizer(vocabulary=self.terms, token_pattern=TOKEN_PATTERN,
                                        preprocessor=normalize_text, dtype=np.int32)

    @classmethod
    def fit_vocabulary(cls, train_texts: list[str], recipe: TfidfRecipe) -> "TfidfFeaturizer":
        vectorizer = CountVectorizer(token_pattern=TOKEN_PATTERN, preprocessor=normalize_text,
                                     stop_words=recipe.stop_words,
                                     max_features=recipe.max_features, max_df=recipe.max_df,
                                     min_df=recipe.min_df, dtype=np.int32)
        try:
            vectorizer.fit(train_texts)
        except ValueError as exc:  # "empty vocabulary" or max_df/min_df leaving no terms
            raise DataError(f"train split: cannot build a vocabulary ({exc})") from exc
        return cls(list(vectorizer.get_feature_names_out()), norm=recipe.norm)

    @property
    def n_features(self) -> int:
        return len(self.terms)

    def counts(self, texts: list[str]) -> sp.csr_matrix:
        return self._counter.transform(texts).tocsr()

    def fit_idf(self, train_counts: sp.csr_matrix) -> None:
        """Smoothed idf, as scikit-learn's TfidfTransformer: ln((1 + n) / (1 + df)) + 1."""
        n_docs = train_counts.shape[0]
        df = np.bincount(train_counts.indices, minlength=self.n_features)
        self.idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0

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
        return cls(payload["terms"], payload["idf"], payload.get("norm", "l2"))

    @classmethod
    def load(cls, path: Path) -> "TfidfFeaturizer":
        return cls.from_json(json.loads(Path(path).read_text()), str(path))

