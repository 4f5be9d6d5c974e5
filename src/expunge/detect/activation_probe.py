"""``activation_probe``: tell the models apart from their own hidden states (white box).

METHODS.md §5.4 (b): the final-norm hidden states over the first generated tokens carry the
trace of unlearning even where the text does not (near 100% for NPO in the paper). Features are
computed by ``responses.first_token_states`` — each response's *generating* model, mean over the
last prompt position and the first ``k`` generated tokens — standardized on the training fold,
then an MLP probe (one hidden layer of 64, as the paper's MLP; L2 1e-3) or ``probe=logistic``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from expunge.config import StrictModel
from expunge.detect.responses import DetectData
from expunge.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    np = lazy("numpy")
linear_model = lazy("sklearn.linear_model")
neural_network = lazy("sklearn.neural_network")
preprocessing = lazy("sklearn.preprocessing")
sklearn_pipeline = lazy("sklearn.pipeline")


class ActivationProbe(StrictModel):
    probe: Literal["mlp", "logistic"] = "mlp"
    hidden: int = Field(default=64, ge=1)
    alpha: float = Field(default=1e-3, ge=0)

    USES: ClassVar[str] = "features"

    def fit_predict(self, train: DetectData, test: DetectData, seed: int = 0) -> np.ndarray:
        if self.probe == "mlp":
            head = neural_network.MLPClassifier(
                hidden_layer_sizes=(self.hidden,),
                alpha=self.alpha,
                max_iter=1000,
                random_state=seed,
            )
        else:
            head = linear_model.LogisticRegression(
                C=1.0 / max(self.alpha, 1e-12), max_iter=5000, random_state=seed
            )
        classifier = sklearn_pipeline.make_pipeline(preprocessing.StandardScaler(), head)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes on tiny folds
            classifier.fit(train.features, train.labels)
        return classifier.predict_proba(test.features)[:, 1]
