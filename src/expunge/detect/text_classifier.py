"""``tfidf_logreg``: which model wrote this response? TF-IDF features + logistic regression.

The cheap black-box baseline of the unlearning-trace paper (METHODS.md §5.4): no model
internals, only the response text. Character n-grams within word boundaries (1–4) by default:
robust to the short, odd outputs of small models and to tokenization; ``analyzer=word`` uses
word uni- and bigrams. Sublinear term frequency, L2 rows, C = 1.
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
sklearn_text = lazy("sklearn.feature_extraction.text")


class TfidfLogreg(StrictModel):
    analyzer: Literal["char_wb", "word"] = "char_wb"
    C: float = Field(default=1.0, gt=0)
    max_features: int | None = Field(default=50_000, ge=1)

    USES: ClassVar[str] = "text"

    def fit_predict(self, train: DetectData, test: DetectData, seed: int = 0) -> np.ndarray:
        """P(label 1) for each test response."""
        ngrams = (1, 4) if self.analyzer == "char_wb" else (1, 2)
        vectorizer = sklearn_text.TfidfVectorizer(
            analyzer=self.analyzer,
            ngram_range=ngrams,
            sublinear_tf=True,
            max_features=self.max_features,
        )
        try:
            x_train = vectorizer.fit_transform(train.texts)
        except ValueError as err:  # every training response empty: nothing to tell them apart
            if "empty vocabulary" not in str(err):
                raise
            return np.full(len(test.texts), 0.5)
        classifier = linear_model.LogisticRegression(C=self.C, max_iter=2000, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            classifier.fit(x_train, train.labels)
        return classifier.predict_proba(vectorizer.transform(test.texts))[:, 1]
