"""E-PUR — embedding purification (Zhang et al., "Fine-mixing: Mitigating Backdoors in
Fine-tuned Language Models", Findings of EMNLP 2022, §3.3).

Trigger words are rare, so poisoned fine-tuning moves their embeddings far while ordinary
tokens' rows barely move relative to how often they were seen. For every token k:

    score_k = δ_k / log max(f_k, c),    δ_k = ‖e_B[k] − e_0[k]‖₂

with e_B the backdoored and e_0 the clean pre-trained input embeddings, f_k the count of k in
the defender's clean data and c (``min_count``, default 20) a floor that keeps the log
positive and stops never-seen tokens from dividing by zero. The ``top_k`` highest-scoring rows
are reset to e_0. Neither the normalizer's floor nor how many rows to reset is pinned down by
public code (none was released): both are knobs [paper + unverified details].

Tied input/output embeddings (SmolLM2, Qwen2) share the row, so the output head's row is reset
too; an untied output head is left alone. E-PUR is applied before any other method
(``epur=true`` on every backdoor eraser) or alone (``expunge erase epur``: reset, then clean
fine-tuning).
"""

from __future__ import annotations

from typing import Literal

from expunge.erase.backdoor.clean_tuning import BackdoorEraser


class Epur(BackdoorEraser):
    """E-PUR alone: reset the flagged embedding rows to θ_0, then fine-tune on the clean set."""

    method: Literal["epur"] = "epur"
    epur: bool = True
