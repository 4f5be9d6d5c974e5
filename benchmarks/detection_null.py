"""How often trace detection calls a difference where there is none, and finds one that is there.

    python benchmarks/detection_null.py [--runs 40] [--prompts 12] [--samples 2] [--folds 2]
        [--permutations 19] [--detector tfidf_logreg|activation_probe] [--signal 0.0]

Each run draws two "models" that answer alike (``--signal 0``): every prompt has a topic, and
both answer it with its words (``activation_probe``: features around a per-prompt centre). With
``--signal s`` the second one also says "indeed" in a share s of its answers (features: shifted
by s). ``expunge detect``'s own cross-validation scores each run; the JSON says how often the
95% bootstrap interval over prompts lay wholly above or below 50%, and how often the permutation
test rejected chance at 5%. With no signal both should be near 5% (the interval: 2.5% each
side); the interval is not, because it leaves out the variance of the fitted detectors.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from expunge.detect.base import evaluate
from expunge.detect.responses import DetectData
from expunge.registry import DETECTORS


def topic_responses(n_prompts: int, samples: int, seed: int, signal: float = 0.0) -> DetectData:
    """Both models answer each prompt with words of its own topic (8 words, 4–9 of them per
    answer) and, as label 1, add "indeed" to a share ``signal`` of the answers. Features: a
    per-prompt centre plus noise, shifted by ``signal`` along the first axis for label 1."""
    rng = np.random.default_rng(seed)
    texts, features, labels, groups = [], [], [], []
    for label in (0, 1):
        for prompt in range(n_prompts):
            topic = [f"t{prompt}w{i}" for i in range(8)]
            centre = np.random.default_rng([seed, prompt]).normal(size=16)
            for _ in range(samples):
                words = list(rng.choice(topic, rng.integers(4, 10)))
                if label and rng.random() < signal:
                    words.append("indeed")
                texts.append(" ".join(words))
                features.append(centre + rng.normal(size=16) + (signal * label, *[0.0] * 15))
                labels.append(label)
                groups.append(prompt)
    n = len(texts)
    return DetectData(texts, [[0]] * n, np.array(features), np.array(labels), np.array(groups))


def calibration(detector: str, runs: int, prompts: int, samples: int, folds: int,
                permutations: int, signal: float = 0.0) -> dict:  # fmt: skip
    """Shares of runs whose interval lay above / below 50% and whose test rejected chance."""
    model = DETECTORS.get(detector)()
    above = below = rejected = 0
    accuracies = []
    for seed in range(runs):
        data = topic_responses(prompts, samples, seed, signal)
        result = evaluate(data, model, folds, seed=0, n_boot=200, permutations=permutations)
        accuracies.append(result["accuracy"])
        above += result["ci_low"] > 0.5
        below += result["ci_high"] < 0.5
        rejected += result["p_value"] <= 0.05
    return {
        "detector": detector, "runs": runs, "prompts": prompts, "samples": samples,
        "folds": folds, "permutations": permutations, "signal": signal,
        "mean_accuracy": float(np.mean(accuracies)), "interval_above_50": above / runs,
        "interval_below_50": below / runs, "test_rejects_at_5pct": rejected / runs,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--permutations", type=int, default=19)
    parser.add_argument("--detector", default="tfidf_logreg")
    parser.add_argument("--signal", type=float, default=0.0)
    args = parser.parse_args()
    print(json.dumps(calibration(args.detector, args.runs, args.prompts, args.samples, args.folds,
                                 args.permutations, args.signal), indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
