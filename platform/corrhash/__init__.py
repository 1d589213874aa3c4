"""corrhash: correlated semantic hashing (CorrSH) training, tuning and search."""

__version__ = "0.1.0"


def load(uri, device: str = "cpu"):
    """A trained model for hashing and search: `corrhash.load("models:/corrhash-20ng-64b@champion")`."""
    from corrhash.serve.hashing import load as load_hashing_model

    return load_hashing_model(uri, device)
