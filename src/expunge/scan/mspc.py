"""MSPC adapted to text: masked scaled prediction consistency over the tokens of an instruction.

The method is Pal et al., "Backdoor Secrets Unveiled: Identifying Backdoor Data with Optimized
Scaled Prediction Consistency" (ICLR 2024), written for images; **this text version is our
adaptation**, not the authors' method. Their observation: multiplying a poisoned image's pixels
by n = 2…12 keeps the model's prediction (the trigger dominates) while a clean image's
drifts. Their score, with a learned mask m over pixels and a shift τ,

    ℓ_MSPC(x; m) = 1/|S| Σ_{n∈S} (2·1[f(clip(n·(x − τ)⊙m)) = f(x)] − 1) ∈ [−1, 1],

is positive for poisoned images, negative for clean ones: the threshold is a natural 0. The
mask comes from a bi-level problem over a split w ∈ {0,1}^N of the training set: the inner
level fits m to make the rows of the split consistent, sparsely,

    m*(w) = argmin_{m∈[0,1]} Σ_i w_i · 1/|S| Σ_n KL(f(x_i) ‖ f(clip(n·(x_i − τ)⊙m))) + λ‖m‖₁,

and the outer level splits at the zero threshold, w_i = 1[ℓ_MSPC(x_i; m*(w)) > 0] (the
authors' code alternates the two, starting from w = 1[ℓ_SPC > 0] without a mask).

The text version (choices of ours, each a knob):

- **perturbation** (the scales n): at level s ∈ ``levels`` each token of the *instruction*
  (the user's words, never the chat template) is selected with probability s and replaced by a
  token drawn uniformly from the instructions' vocabulary; ``draws`` draws per level. The draws
  are fixed per row and level, so scores change only with the mask.
- **mask** over the *vocabulary* (shared by all rows, as the pixel mask is shared by all
  images: a text trigger moves but keeps its tokens): a selected token t is embedded as
  m_t·e(t) + (1 − m_t)·e(r), so m_t = 1 protects it. The mask starts at 0 (the authors start
  at 1 with SGD; over a vocabulary most tokens occur in no row of the split and would stay
  protected through the few steps we take) and is fitted with Adam, projected to [0, 1].
- **prediction**: the model's greedy tokens at the first ``k`` response positions
  (teacher-forced on the row's own response); consistent = all k unchanged. The inner
  level's KL is between the unperturbed and perturbed next-token distributions there.
- no shift τ (it dims pixels; tokens have no intensity).
- **contrast** (ours, ``contrast=0`` is the authors' inner objective): the inner level also
  *subtracts* the KL of as many rows from outside the split, so the mask protects the tokens
  that tell the split apart (a trigger) rather than words every instruction shares ("What
  is"), which would make every row consistent.

Defaults: levels 0.25/0.5/0.75, k = 4, 2 outer iterations of 3 inner epochs (the authors: 4 of
10), Adam lr 0.1, λ = 0.05 on ‖m‖₁ (a token must matter to a few percent of the split to stay
protected). The model is the one trained on the rows; no clean data and no hand-set threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, PrivateAttr

from expunge.config import StrictModel
from expunge.data.examples import Example
from expunge.data.formatting import prompt_text
from expunge.errors import DataError
from expunge.scan.base import ScanContext, ScorerResult
from expunge.train.progress import track


@dataclass
class Row:
    ids: list[int]  # prompt + the first k response tokens
    start: int  # index of the first response token
    k: int
    content: np.ndarray  # positions of the instruction's own tokens


def instruction(example: Example) -> str:
    if example.prompt is not None:
        return example.prompt
    users = [m.content for m in example.messages or [] if m.role == "user"]
    return users[-1] if users else ""


def content_positions(tokenizer, example: Example, prompt_ids: list[int], fmt) -> np.ndarray:
    """Positions of the prompt tokens that lie inside the instruction's characters."""
    text = prompt_text(example, tokenizer, fmt)
    user = instruction(example)
    begin = text.rfind(user)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    shift = len(prompt_ids) - len(ids)
    if begin < 0 or shift < 0 or prompt_ids[shift:] != ids:
        special = set(tokenizer.all_special_ids)
        return np.array([i for i, t in enumerate(prompt_ids) if t not in special], dtype=int)
    end = begin + len(user)
    return np.array([shift + i for i, (s, e) in enumerate(offsets) if s >= begin and e <= end
                     and e > s], dtype=int)  # fmt: skip


class MSPC(StrictModel):
    levels: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=1)
    draws: int = Field(default=1, ge=1)
    k: int = Field(default=4, ge=1)
    outer: int = Field(default=2, ge=0)  # 0: the unmasked text SPC (the warm start) only
    inner_epochs: int = Field(default=3, ge=1)
    lr: float = Field(default=0.1, gt=0.0)
    l1: float = Field(default=0.05, ge=0.0)
    contrast: float = Field(default=1.0, ge=0.0)  # weight of the rows outside the split
    _plans: list = PrivateAttr(default_factory=list)  # per row: (positions, replacements)

    def score(self, ctx: ScanContext) -> ScorerResult:
        model, tokenizer = ctx.loaded.model, ctx.loaded.tokenizer
        model.eval()
        frozen = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            return self._score(ctx, model, tokenizer)
        finally:
            for p, flag in zip(model.parameters(), frozen, strict=True):
                p.requires_grad_(flag)

    def _score(self, ctx: ScanContext, model, tokenizer) -> ScorerResult:
        rows = []
        for example, tok in zip(ctx.examples, ctx.tokenized, strict=True):
            k = min(self.k, len(tok.input_ids) - tok.prompt_length)
            prompt = tok.input_ids[: tok.prompt_length]
            rows.append(Row(tok.input_ids[: tok.prompt_length + k], tok.prompt_length, k,
                            content_positions(tokenizer, example, prompt, ctx.fmt)))  # fmt: skip
        held = [np.asarray(r.ids)[r.content] for r in rows if len(r.content)]
        if not held:
            raise DataError("mspc found no instruction tokens to perturb in any row")
        pool = np.unique(np.concatenate(held))
        self._plans = self._draws(rows, pool, ctx.seed)
        embed = model.get_input_embeddings()
        device = embed.weight.device
        mask = torch.zeros(embed.weight.shape[0], device=device)
        base = self._base_predictions(model, rows, ctx)
        warm = self._consistency(model, rows, mask, base, ctx, "mspc: unmasked SPC")
        scores, split_sizes = warm, []
        for _ in range(self.outer):
            split = scores > 0
            split_sizes.append(int(split.sum()))
            if not split.any():
                break
            mask = self._fit_mask(model, rows, np.flatnonzero(split), pool, ctx)
            scores = self._consistency(model, rows, mask, base, ctx, "mspc: masked SPC")
        usable = np.array([len(r.content) > 0 and r.k > 0 for r in rows])
        scores = np.where(usable, scores, 0.0)
        protected = mask[torch.as_tensor(pool, device=device)]
        return ScorerResult(scores, scores > 0, {
            "levels": self.levels, "k": self.k, "outer": self.outer, "split_sizes": split_sizes,
            "rows_without_instruction_tokens": int((~usable).sum()),
            "vocabulary": len(pool), "mask_mean": float(protected.mean()),
            "mask_above_half": int((protected > 0.5).sum()), "flag_rule": "score > 0",
            "warm_start_scores": warm.tolist(),
        })  # fmt: skip

    # -- the perturbations -------------------------------------------------------------

    def _draws(self, rows: list[Row], pool: np.ndarray, seed: int) -> list[list[tuple]]:
        """Per row: for each (level, draw), the selected positions and their replacements."""
        plans = []
        for index, row in enumerate(rows):
            plan = []
            for level_index, level in enumerate(self.levels):
                for draw in range(self.draws):
                    rng = np.random.default_rng([seed, index, level_index, draw])
                    chosen = row.content[rng.random(len(row.content)) < level]
                    plan.append((chosen, rng.choice(pool, size=len(chosen))))
            plans.append(plan)
        return plans

    def _batch(self, model, rows, items, mask, device):
        """inputs_embeds for (row, plan index) items (plan None: unperturbed), right-padded."""
        embed = model.get_input_embeddings()
        width = max(len(rows[i].ids) for i, _ in items)
        ids = torch.zeros(len(items), width, dtype=torch.long)
        attention = torch.zeros(len(items), width, dtype=torch.long)
        selected = torch.zeros(len(items), width, dtype=torch.bool)
        replace = torch.zeros(len(items), width, dtype=torch.long)
        for b, (i, p) in enumerate(items):
            n = len(rows[i].ids)
            ids[b, :n] = torch.tensor(rows[i].ids)
            attention[b, :n] = 1
            if p is not None:
                positions, tokens = self._plans[i][p]
                selected[b, positions] = True
                replace[b, positions] = torch.as_tensor(tokens, dtype=torch.long)
        ids, attention = ids.to(device), attention.to(device)
        selected, replace = selected.to(device), replace.to(device)
        vectors = embed(ids)
        keep = mask[ids].unsqueeze(-1).to(vectors.dtype)
        mixed = keep * vectors + (1 - keep) * embed(replace)
        vectors = torch.where(selected.unsqueeze(-1), mixed, vectors)
        return model(inputs_embeds=vectors, attention_mask=attention).logits

    @staticmethod
    def _positions(rows, items) -> list[torch.Tensor]:
        """Logit positions that predict each item's first k response tokens."""
        return [torch.arange(rows[i].start - 1, rows[i].start - 1 + rows[i].k) for i, _ in items]

    @torch.no_grad()
    def _base_predictions(self, model, rows, ctx) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        device = model.get_input_embeddings().weight.device
        mask = torch.zeros(model.get_input_embeddings().weight.shape[0], device=device)
        chunks = [list(range(s, min(s + ctx.batch_size, len(rows))))
                  for s in range(0, len(rows), ctx.batch_size)]  # fmt: skip
        for chunk in chunks:
            items = [(i, None) for i in chunk]
            logits = self._batch(model, rows, items, mask, device)
            for b, pos in enumerate(self._positions(rows, items)):
                out[chunk[b]] = logits[b, pos].argmax(-1).cpu()
        return out

    @torch.no_grad()
    def _consistency(self, model, rows, mask, base, ctx, description) -> np.ndarray:
        """ℓ_MSPC per row: mean over levels and draws of 2·1[same k greedy tokens] − 1."""
        n_plans = len(self.levels) * self.draws
        items = [(i, p) for i in range(len(rows)) for p in range(n_plans)]
        total = np.zeros(len(rows))
        device = mask.device
        chunks = [items[s : s + ctx.batch_size] for s in range(0, len(items), ctx.batch_size)]
        for chunk in track(chunks, description, total=len(chunks), enabled=ctx.progress):
            logits = self._batch(model, rows, chunk, mask, device)
            for b, pos in enumerate(self._positions(rows, chunk)):
                same = bool(torch.equal(logits[b, pos].argmax(-1).cpu(), base[chunk[b][0]]))
                total[chunk[b][0]] += 2.0 * same - 1.0
        return total / n_plans

    def _fit_mask(self, model, rows, split, pool, ctx) -> torch.Tensor:
        """The inner level: Adam on m (projected to [0, 1]) over the split's rows."""
        device = model.get_input_embeddings().weight.device
        mask = torch.zeros(model.get_input_embeddings().weight.shape[0], device=device,
                           requires_grad=True)  # fmt: skip
        vocab = torch.as_tensor(pool, device=device)
        optimizer = torch.optim.Adam([mask], lr=self.lr)
        n_plans = len(self.levels) * self.draws
        order_rng = np.random.default_rng([ctx.seed, 7])
        outside = np.setdiff1d(np.arange(len(rows)), split)
        for _ in range(self.inner_epochs):
            order = order_rng.permutation(split)
            for start in range(0, len(order), ctx.batch_size):
                chunk = [int(i) for i in order[start : start + ctx.batch_size]]
                optimizer.zero_grad(set_to_none=True)
                loss = self._kl(model, rows, chunk, mask, n_plans, device) / len(chunk)
                if self.contrast > 0 and len(outside):
                    drawn = [int(i) for i in order_rng.choice(outside, size=len(chunk))]
                    loss = loss - self.contrast * self._kl(model, rows, drawn, mask, n_plans,
                                                           device) / len(drawn)  # fmt: skip
                loss = loss + self.l1 * mask[vocab].abs().sum()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    mask.clamp_(0.0, 1.0)
        return mask.detach()

    def _kl(self, model, rows, chunk, mask, n_plans, device) -> torch.Tensor:
        """Σ over ``chunk`` of the mean KL(unperturbed ‖ perturbed) at the k response positions,
        averaged over levels and draws."""
        with torch.no_grad():
            clean_items = [(i, None) for i in chunk]
            reference = self._batch(model, rows, clean_items, mask.detach(), device)
            targets = [torch.log_softmax(reference[b, pos].float(), -1)
                       for b, pos in enumerate(self._positions(rows, clean_items))]  # fmt: skip
        items = [(i, p) for i in chunk for p in range(n_plans)]
        logits = self._batch(model, rows, items, mask, device)
        kl = torch.zeros((), device=device)
        for b, pos in enumerate(self._positions(rows, items)):
            log_q = torch.log_softmax(logits[b, pos].float(), -1)
            log_p = targets[b // n_plans]
            kl = kl + (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        return kl / n_plans
