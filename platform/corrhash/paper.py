"""The published numbers corrhash's reports compare with: Zheng, Su, Shen and Chen, "Generative Semantic Hashing
Enhanced via Boltzmann Machines", ACL 2020, Tables 1-3 (test precision@100; BMSH has no 8-bit figure there)."""

from __future__ import annotations

# (dataset, registered model name) -> {bits: test precision@100}; "corrsh" is the paper's "Ours".
PRECISION_AT_100 = {
    ("20ng", "lsh"): {8: 0.0578, 16: 0.0597, 32: 0.0666, 64: 0.0770, 128: 0.0949},
    ("20ng", "srbm"): {8: 0.0594, 16: 0.0604, 32: 0.0533, 64: 0.0623, 128: 0.0642},
    ("20ng", "sph"): {8: 0.2545, 16: 0.3200, 32: 0.3709, 64: 0.3196, 128: 0.2716},
    ("20ng", "sth"): {8: 0.3664, 16: 0.5237, 32: 0.5860, 64: 0.5806, 128: 0.5443},
    ("20ng", "vdsh"): {8: 0.3643, 16: 0.3904, 32: 0.4327, 64: 0.1731, 128: 0.0522},
    ("20ng", "nash"): {8: 0.3786, 16: 0.5108, 32: 0.5671, 64: 0.5071, 128: 0.4664},
    ("20ng", "bmsh"): {16: 0.5812, 32: 0.6100, 64: 0.6008, 128: 0.5802},
    ("20ng", "corrsh"): {8: 0.4389, 16: 0.5839, 32: 0.6183, 64: 0.6279, 128: 0.6359},
    ("reuters", "lsh"): {8: 0.2802, 16: 0.3215, 32: 0.3862, 64: 0.4667, 128: 0.5194},
    ("reuters", "srbm"): {8: 0.5113, 16: 0.5740, 32: 0.6154, 64: 0.6177, 128: 0.6452},
    ("reuters", "sph"): {8: 0.6080, 16: 0.6340, 32: 0.6513, 64: 0.6290, 128: 0.6045},
    ("reuters", "sth"): {8: 0.6616, 16: 0.7351, 32: 0.7554, 64: 0.7350, 128: 0.6986},
    ("reuters", "vdsh"): {8: 0.6859, 16: 0.7165, 32: 0.7753, 64: 0.7456, 128: 0.7318},
    ("reuters", "nash"): {8: 0.7113, 16: 0.7624, 32: 0.7993, 64: 0.7812, 128: 0.7559},
    ("reuters", "bmsh"): {16: 0.7954, 32: 0.8286, 64: 0.8226, 128: 0.7941},
    ("reuters", "corrsh"): {8: 0.7589, 16: 0.8212, 32: 0.8420, 64: 0.8465, 128: 0.8482},
    ("tmc", "lsh"): {8: 0.4388, 16: 0.4393, 32: 0.4514, 64: 0.4553, 128: 0.4773},
    ("tmc", "srbm"): {8: 0.4846, 16: 0.5108, 32: 0.5166, 64: 0.5190, 128: 0.5137},
    ("tmc", "sph"): {8: 0.5807, 16: 0.6055, 32: 0.6281, 64: 0.6143, 128: 0.5891},
    ("tmc", "sth"): {8: 0.3723, 16: 0.3947, 32: 0.4105, 64: 0.4181, 128: 0.4123},
    ("tmc", "vdsh"): {8: 0.4330, 16: 0.6853, 32: 0.7108, 64: 0.4410, 128: 0.5847},
    ("tmc", "nash"): {8: 0.5849, 16: 0.6573, 32: 0.6921, 64: 0.6548, 128: 0.5998},
    ("tmc", "bmsh"): {16: 0.7062, 32: 0.7481, 64: 0.7519, 128: 0.7450},
    ("tmc", "corrsh"): {8: 0.6959, 16: 0.7243, 32: 0.7534, 64: 0.7606, 128: 0.7632},
}

# The order of the paper's rows: data-independent, classic learned, then the VAEs.
METHOD_ORDER = ["lsh", "srbm", "sph", "sth", "vdsh", "nash", "bmsh", "corrsh"]


def paper_precision(dataset: str, method: str, bits: int) -> float | None:
    """The paper's test precision@100 for a dataset name or label; any "20ng..." (20ng-18828, a grid's
    20ng-paper) is the paper's 20 Newsgroups."""
    name = "20ng" if dataset.startswith("20ng") else dataset
    return PRECISION_AT_100.get((name, method), {}).get(bits)
