"""Procedural arithmetic word problems with exact answers and step-by-step rationales (tiny/ci only).

A stand-in source for the math datasets when neither the mirror nor the hub has them, so small profiles
run anywhere. Every record is labelled synthetic (meta["synthetic"] = True, source "synthetic") and the
prepared manifest says so; scores on it are never comparable to published ones.

Each problem chains 2–4 operations over small integers; the rationale states each step as
"a op b = c" (the same shape as GSM8K's calculator annotations) and the answer is the exact final value.
"""

from __future__ import annotations

import random

from shared.data.records import Record

NAMES = ("Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena")
ITEMS = ("apples", "books", "marbles", "stickers", "pencils", "coins", "cards", "shells", "stamps", "cookies")


def _problem(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(5, 60)
    sentences = [f"{name} has {value} {item}."]
    steps: list[str] = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(("buy", "give", "double", "share"))
        if kind == "buy":
            n = rng.randint(2, 30)
            sentences.append(f"Then {name} buys {n} more {item}.")
            steps.append(f"{value} + {n} = {value + n}")
            value += n
        elif kind == "give" and value > 2:
            n = rng.randint(1, value - 1)
            sentences.append(f"{name} gives away {n} {item}.")
            steps.append(f"{value} - {n} = {value - n}")
            value -= n
        elif kind == "double" and value <= 200:
            sentences.append(f"A friend gives {name} as many {item} as {name} already has.")
            steps.append(f"{value} * 2 = {value * 2}")
            value *= 2
        else:
            divisors = [d for d in (2, 3, 4, 5) if value % d == 0]
            if not divisors:
                n = rng.randint(1, 9)
                sentences.append(f"{name} finds {n} more {item}.")
                steps.append(f"{value} + {n} = {value + n}")
                value += n
                continue
            d = rng.choice(divisors)
            sentences.append(f"{name} splits the {item} equally into {d} boxes and keeps one box.")
            steps.append(f"{value} / {d} = {value // d}")
            value //= d
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return question, steps, value


def generate_problems(n: int, *, seed: int, dataset: str = "GSM8K", split: str = "train") -> list[Record]:
    """`n` problems, deterministic for (seed, dataset); ids "<dataset>/synthetic-<i>"."""
    rng = random.Random(f"{seed}:{dataset}")
    records = []
    for i in range(n):
        question, steps, answer = _problem(rng)
        rationale = "\n".join(steps)
        records.append(Record(id=f"{dataset}/synthetic-{i}", dataset=dataset, category="math", split=split,
                              prompt=question, answer=str(answer), rationale=rationale, source_split="synthetic",
                              meta={"synthetic": True, "steps": steps}))
    return records


def check_rationale(record: Record) -> bool:
    """Every step computes what it says, steps chain, and the last result is the answer."""
    previous = None
    for step in record.meta.get("steps", []):
        lhs, rhs = step.split(" = ")
        a, op, b = lhs.split(" ")
        a_i, b_i, r_i = int(a), int(b), int(rhs)
        if previous is not None and a_i != previous:
            return False
        got = {"+": a_i + b_i, "-": a_i - b_i, "*": a_i * b_i, "/": a_i // b_i if a_i % b_i == 0 else None}[op]
        if got != r_i:
            return False
        previous = r_i
    return previous is not None and str(previous) == record.answer
