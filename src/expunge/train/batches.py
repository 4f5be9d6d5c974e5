"""What each optimizer step is made of: a seeded, resumable walk over every stream, and the
micro-batches drawn from it (token counts taken on the CPU, a shared prompt prefix found)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.data.collator import collate
from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
from expunge.lazy import lazy
from expunge.train.settings import TrainSettings

if TYPE_CHECKING:
    import numpy as np
    import torch
    from accelerate import Accelerator
else:  # loaded when training starts (expunge.lazy)
    np = lazy("numpy")


class StreamSampler:
    """An endless, seeded walk over one stream: epoch after epoch of fresh permutations.

    The position is a single integer (indices consumed), so a resume restores it exactly.

    With ``lengths`` (``train.group_by_length``), the walk is cut into windows of ``window``
    batches of ``block`` indices (one global micro-batch); inside a window the indices are
    sorted by length, cut into batches and the batches shuffled (seeded by the window), so a
    batch holds examples of similar length and pads little. Every draw takes one whole batch,
    so windows stay aligned with batches across epochs and a resume lands on the same batches.
    """

    def __init__(
        self, size: int, seed: int, salt: int, lengths: list[int] | None = None,
        block: int = 1, window: int = 16,
    ) -> None:  # fmt: skip
        self.size = size
        self.seed = seed
        self.salt = salt
        self.consumed = 0
        self._epoch = -1
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.span = block * window
        self.block = block
        self._window = -1
        self._window_order: np.ndarray = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, self.salt, epoch])
            self._order = rng.permutation(self.size)
            self._epoch = epoch
        return self._order

    def _plain(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return int(self._permutation(epoch)[offset])

    def _grouped(self, position: int) -> int:
        window, offset = divmod(position, self.span)
        if window != self._window:
            start = window * self.span
            plain = np.array([self._plain(p) for p in range(start, start + self.span)])
            assert self.lengths is not None
            by_length = plain[np.argsort(-self.lengths[plain], kind="stable")]
            batches = by_length.reshape(-1, self.block)
            rng = np.random.default_rng([self.seed, self.salt, 1 << 20, window])
            self._window_order = batches[rng.permutation(len(batches))].reshape(-1)
            self._window = window
        return int(self._window_order[offset])

    def take(self, count: int) -> list[int]:
        pick = self._plain if self.lengths is None else self._grouped
        out = [pick(position) for position in range(self.consumed, self.consumed + count)]
        self.consumed += count
        return out


def draw_step(
    streams: dict[str, list[TokenizedExample]],
    samplers: dict[str, StreamSampler],
    names: tuple[str, ...],
    settings: TrainSettings,
    accelerator: Accelerator,
    pad_token_id: int,
    share_prefix: bool = False,
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """``grad_accum`` micro-batches; each process keeps its slice of every global micro-batch."""
    world, rank, size = accelerator.num_processes, accelerator.process_index, settings.batch_size
    micro = []
    for _ in range(settings.grad_accum):
        batches = {}
        for name in names:
            global_indices = samplers[name].take(size * world)
            local = global_indices[rank * size : (rank + 1) * size]
            examples = [streams[name][i] for i in local]
            batch = collate(examples, pad_token_id)
            # Token counts are taken here, on the CPU: reading them off device tensors later
            # would force a GPU sync every step. So are the rows' identities for the
            # reference cache (an example is its tokens and labels).
            counts = {
                "_cpu_label_count": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
                "_cpu_token_count": int(batch["attention_mask"].sum()),
                "_cpu_row_keys": [(tuple(e.input_ids), tuple(e.labels)) for e in examples],
            }
            if share_prefix:
                counts["_cpu_shared_prefix"] = shared_prefix(examples)
            batches[name] = {k: v.to(accelerator.device) for k, v in batch.items()} | counts
        micro.append(batches)
    return micro


# Below this many shared tokens the extra forward call costs more than it saves.
MIN_SHARED_PREFIX = 8


def shared_prefix(examples: list[TokenizedExample]) -> int:
    """Tokens every row starts with and no label falls in (0 when fewer than 8, or one row).

    The prefix stops before the first position that predicts a label in any row, so every
    logit the loss needs comes from the rows' own continuation, and leaves every row at least
    one token of its own."""
    if len(examples) < 2:
        return 0
    limit = min(len(e.input_ids) for e in examples) - 1
    for e in examples:
        first = next((i for i, label in enumerate(e.labels) if i and label != IGNORE_INDEX), None)
        if first is not None:
            limit = min(limit, first - 1)  # position first-1 predicts the first label
    first_ids = examples[0].input_ids
    length = 0
    while length < limit and all(e.input_ids[length] == first_ids[length] for e in examples):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def cpu_int(batch: dict, key: str) -> int:
    """A count collated on the CPU (kept there as ``_cpu_<key>``: no device sync to read it)."""
    return int(batch["_cpu_" + key])
