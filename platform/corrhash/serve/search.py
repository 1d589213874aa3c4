"""Answering queries with a model and an index: the one core of the HTTP app (serve/app.py) and of jobs/search.py.
No HTTP, no Ray: the callers validate what comes in and shape what goes out."""

from __future__ import annotations

import numpy as np

NO_VOCABULARY = "no term of the model's vocabulary: the hits are arbitrary"


class Searcher:
    """A HashingModel and a HammingIndex over documents; `shown` ({id: fields}) is what a hit shows of each."""

    def __init__(self, model, index, shown: dict | None = None, uri: str | None = None):
        self.model, self.index, self.shown, self.uri = model, index, dict(shown or {}), uri

    def health(self) -> dict:
        return {"status": "ok", "model": self.uri, "bits": self.model.bits, "documents": len(self.index)}

    def encode(self, texts: list[str]) -> dict:
        """The packed codes of `texts` as hex (as the MLflow pyfunc model answers) and each one's vocabulary terms."""
        features = self.model.featurize(texts)
        codes = self.model.encode_features(features)
        return {"bits": self.model.bits, "codes": [row.tobytes().hex() for row in codes],
                "in_vocabulary": [int(n) for n in np.diff(features.indptr)]}

    def search(self, texts: list[str], k: int) -> list[dict]:
        """One result per text: `{"query": j, "in_vocabulary": distinct vocabulary terms, "hits": [{"id",
        "distance", **shown}]}`, with a `warning` when no term of the text is in the vocabulary."""
        features = self.model.featurize(texts)
        ids, distances = self.index.search(self.model.encode_features(features), k)
        results = []
        for j, n in enumerate(np.diff(features.indptr)):
            hits = [{"id": doc.item(), "distance": int(d), **self.shown.get(doc.item(), {})}
                    for doc, d in zip(ids[j], distances[j])]
            result = {"query": j, "in_vocabulary": int(n), "hits": hits}
            if n == 0:
                result["warning"] = NO_VOCABULARY
            results.append(result)
        return results
