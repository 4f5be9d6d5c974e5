"""Teacher-forced ``greedy_match`` vs generation-based checking, timed side by side.

Would greedy decoding reproduce this response? The natural check generates
``max_new_tokens = len(response)`` tokens greedily and compares them to the response;
``greedy_match`` decides the same from one forward pass over prompt+response. This script builds
realistic chat cases (invented-place questions in the model's chat template; half of the
responses are the model's own greedy answers, half are those answers with one token changed),
times both methods on the same cases, asserts they agree on every case, and prints the times,
cases/s and the speed-up.

    python benchmarks/bench_greedy_match.py                    # embedded SmolLM2-135M
    python benchmarks/bench_greedy_match.py --batch-size 16    # batched only (quicker)
    python benchmarks/bench_greedy_match.py --tiny --arch gpt2 # a tiny random model

What to expect: both methods push about the same number of tokens through the model (prompt
prefill + one step per response token, vs one pass over prompt+response), so the gain is the
per-step cost of decoding: large where a decode step is latency-bound (a GPU, batch size 1),
small on a CPU with big batches, where a 135M model is compute-bound either way.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch
from rich.console import Console
from rich.table import Table

from expunge.audit.scoring import generate, greedy_match
from expunge.data.formatting import FormatSettings, prompt_text
from expunge.data.synthetic import place_qa


def load(args: argparse.Namespace):
    if args.tiny:
        from expunge.models.tiny import tiny_model

        model, tokenizer = tiny_model(args.arch, seed=0)
        return model, tokenizer, f"tiny {args.arch} (random)"
    from expunge.models import load_model

    loaded = load_model(args.model, device=args.device)
    return loaded.model, loaded.tokenizer, f"{args.model} on {loaded.device} ({loaded.dtype})"


def build_cases(model, tokenizer, args: argparse.Namespace):
    """Chat prompts; responses = greedy answers (even cases) or perturbed ones (odd cases)."""
    rng = random.Random(args.seed)
    examples = place_qa(max(1, (args.cases + 1) // 2), seed=args.seed)[: args.cases]
    settings = FormatSettings(template="chat")
    prompts = [
        tokenizer(prompt_text(e, tokenizer, settings), add_special_tokens=False)["input_ids"]
        for e in examples
    ]
    lengths = [rng.randint(args.min_tokens, args.max_tokens) for _ in prompts]
    answers = generate(model, tokenizer, prompts, max_new_tokens=args.max_tokens, batch_size=16)
    special = set(tokenizer.all_special_ids)
    responses, kinds = [], []
    for i, (answer, length) in enumerate(zip(answers, lengths, strict=True)):
        response = answer[:length]  # a greedy answer cut anywhere is still a greedy answer
        if i % 2:
            j = rng.randrange(len(response))
            while (token := rng.randrange(len(tokenizer))) in special or token == response[j]:
                pass
            response = [*response[:j], token, *response[j + 1 :]]
        responses.append(response)
        kinds.append("perturbed" if i % 2 else "greedy")
    return prompts, responses, kinds


def check_by_generation(model, tokenizer, prompts, responses, batch_size):
    """Generate greedily (len(response) tokens; one call, so the longest length) and compare."""
    generated = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max(len(r) for r in responses),
        batch_size=batch_size,
    )
    decisions = []
    for out, response in zip(generated, responses, strict=True):
        out = out[: len(response)]
        pairs = zip(out, response, strict=False)  # out is shorter if generation hit EOS
        prefix = next((k for k, (a, b) in enumerate(pairs) if a != b), len(out))
        decisions.append((out == response, prefix))
    return decisions


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model")
    parser.add_argument("--arch", default="llama", choices=["llama", "gpt2", "qwen2"])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, path or hub id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[1, 16],
        help="one or more batch sizes, each timed for both methods (default: 1 16)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 90))

    model, tokenizer, name = load(args)
    prompts, responses, kinds = build_cases(model, tokenizer, args)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # warm-up: first calls pay one-off costs (kernel selection, allocator)
    greedy_match(model, prompts[:2], responses[:2], pad)
    generate(model, tokenizer, prompts[:2], max_new_tokens=2)

    n = len(prompts)
    table = Table(title=f"greedy match check: {n} cases, {name}")
    for column in ("batch", "generate s", "cases/s", "greedy_match s", "cases/s", "speed-up",
                   "agree"):  # fmt: skip
        table.add_column(column, justify="right")
    failures = []
    for batch_size in args.batch_size:
        matched, t_match = timed(
            lambda bs=batch_size: greedy_match(
                model, prompts, responses, pad, batch_size=bs, eos_token_id=eos
            )
        )
        by_generation, t_gen = timed(
            lambda bs=batch_size: check_by_generation(model, tokenizer, prompts, responses, bs)
        )
        disagree = [
            i
            for i, (m, (g_match, g_prefix)) in enumerate(zip(matched, by_generation, strict=True))
            if m.match != g_match or m.matched_tokens != g_prefix
        ]
        failures += [(batch_size, i) for i in disagree]
        table.add_row(
            str(batch_size), f"{t_gen:.2f}", f"{n / t_gen:.2f}", f"{t_match:.2f}",
            f"{n / t_match:.2f}", f"{t_gen / t_match:.1f}x", f"{n - len(disagree)}/{n}",
        )  # fmt: skip
    console.print(table)
    greedy_matches = sum(m.match for m, k in zip(matched, kinds, strict=True) if k == "greedy")
    perturbed_matches = sum(
        m.match for m, k in zip(matched, kinds, strict=True) if k == "perturbed"
    )
    lengths = [len(r) for r in responses]
    console.print(
        f"prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))}, response tokens "
        f"{min(lengths)}-{max(lengths)}; matched: greedy answers {greedy_matches}/"
        f"{kinds.count('greedy')}, perturbed {perturbed_matches}/{kinds.count('perturbed')}; "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    assert not failures, f"greedy_match and generation disagree on (batch size, case) {failures}"


if __name__ == "__main__":
    main()
