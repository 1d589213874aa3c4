"""MLflow "model from code": this file is the pyfunc model, so nothing is pickled when logging.

`mlflow.pyfunc.load_model(uri).predict(["some text", ...])` returns one hex string of packed
code bytes per text. Python users should prefer `corrhash.load(uri).encode(texts)`.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class CorrhashPyfunc(PythonModel):
    def load_context(self, context):
        from corrhash.artifact import MLFLOW_ARTIFACT_KEY
        from corrhash.serve.hashing import HashingModel

        self.hashing = HashingModel(context.artifacts[MLFLOW_ARTIFACT_KEY])

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return [row.tobytes().hex() for row in self.hashing.encode([str(t) for t in model_input])]


mlflow.models.set_model(CorrhashPyfunc())
