"""The installed package itself: its version and folder (what a Ray job's runtime env and a logged MLflow model
carry). A basic module, so nothing needs to import the package root for them."""

from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent
