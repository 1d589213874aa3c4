"""MLflow: tracking URI defaults, runs, and the text → codes pyfunc model."""
