"""The code of the MLflow model a run logs (MLflow "models from code": no pickled object).

MLflow copies this file into the logged model and runs it when the model is loaded; it builds
the :class:`~experiments.model_logging.RobustnessModel`, which rebuilds the network from the
model's weights-only checkpoint artifacts. Loading needs this project installed.
"""

from mlflow.models import set_model

from experiments.model_logging import RobustnessModel

set_model(RobustnessModel())
