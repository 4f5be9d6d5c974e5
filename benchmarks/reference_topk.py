"""How much of a reference's next-token distribution its top-k tokens hold, on a method's real
data, and how far the top-k KL is from the exact KL: what ``train.reference_cache=topk`` loses.

    python benchmarks/reference_topk.py --method meraser_recover --k 16 64 256

The reference is the model as loaded; the student is the same model after ``--steps`` steps of
the method's own training (so the two differ as they do in a run). For each k: the mean and the
5th percentile of the top-k mass over the label positions, and the KL summed over the data
computed exactly and from the top-k targets (the top-k KL is a lower bound). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

from bench_methods import SETUPS, load_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="meraser_recover", choices=sorted(SETUPS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from expunge.data.collator import collate
    from expunge.train.kl import kl_to_reference_sum
    from expunge.train.loop import prepare_trainable, train
    from expunge.train.reference import Reference, ReferenceCache

    loaded = load_base(args.model)
    settings, streams, make_objective, primary = SETUPS[args.method](loaded, {}, {}, args.seed)
    reference = Reference(loaded.model)  # a frozen copy: the model before training
    settings = settings.model_copy(update={"max_steps": args.steps, "progress": False})
    model = prepare_trainable(loaded.model, settings)
    kwargs = {"primary_stream": primary} if primary else {}
    model, _ = train(model, streams, make_objective(model), settings,
                     loaded.tokenizer.pad_token_id, **kwargs)  # fmt: skip
    name = primary or next(iter(streams))
    rows = streams[name][: args.examples]
    out: dict = {"method": args.method, "stream": name, "examples": len(rows), "k": {}}
    masses: dict[int, list[np.ndarray]] = {k: [] for k in args.k}
    exact, approx = 0.0, {k: 0.0 for k in args.k}
    with torch.no_grad():
        for start in range(0, len(rows), 8):
            batch = collate(rows[start : start + 8], loaded.tokenizer.pad_token_id)
            logits, _ = reference.label_logits(model, batch)
            probs = torch.softmax(logits.float(), dim=-1)
            for k in args.k:
                masses[k].append(probs.topk(k, dim=-1).values.sum(-1).numpy())
            exact += float(kl_to_reference_sum(model, reference, batch))
            for k in args.k:
                cache = ReferenceCache("topk", k)
                approx[k] += float(kl_to_reference_sum(model, reference, batch, cache))
    out["kl_exact"] = exact
    for k in args.k:
        mass = np.concatenate(masses[k])
        out["k"][k] = {"mass_mean": float(mass.mean()), "mass_p5": float(np.percentile(mass, 5)),
                       "kl_topk": approx[k], "kl_ratio": approx[k] / exact if exact else None}  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
