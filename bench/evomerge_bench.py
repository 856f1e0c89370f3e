"""EvoMerge (Phase 2) costs: merge throughput per operator and combo (default size), cost per generation (tiny).

In one run: the merge throughput of every operator and of the 8 three-stage combos at the `default` profile's
model size, then the evaluation cost of one generation of the loop at `tiny` size (and at `ci` size for
reference).

    .venv/bin/python bench/evomerge_bench.py [--skip-default] [--skip-generation] [--skip-ci] [--repeats 3]
                                             [--slow-s 20] [--out FILE]

Part 1 (default size, fp32, CPU). A family like Phase 1's: the ancestor (the profile's model, full memory
capacity, seeded init) and three parents = deep copies of it with each variant's capacity
(layer.memory.set_active_slots(ltm_slots)) and act_threshold, plus seeded Gaussian deltas δ ~ N(0, σ²),
σ = 0.01 × max(RMS(θ), 0.02) per tensor. Each operator of services.evomerge.core.merge runs on the state
dicts the way a combo uses it (the hyperparameters are the profile's: DARE p = dare_drop_prob, TIES density =
ties_density); each combo is combos.apply_merge_combo on the models (task vectors, the three stages, and
building the merged model). Times: median of --repeats runs; an operation whose first run takes longer than
--slow-s seconds runs once (the `runs` column says so). N = merged parameters (every tensor of the state but
the memory masks, tied weights once); k = input models the operation reads; the headline figure is
parameters/s = N × k / s (parameters read per second); N / s (merged parameters written per second) is shown
too, since FrankenMerge and DFS copy each entry from one input only.

Part 2 (tiny; ci with it unless --skip-ci). The same kind of family at the profile's size; the data are the
profile's own: the datasets phase's preparation from the local mirror and its trained BPE (a few seconds),
fitness batches = the first fitness_eval_batches batches of 4 × max_seq_len from the validation stream
(Phase1Dataset, labels shifted), the multiple-choice term on the first mc_examples ARC validation records
(random tokens and no MC term if the mirror is missing: the section says which). Fitness = evolution's
evaluate_fitness with the profile's weights and C_ref = the cheapest parent's compute. Timed: one
evaluate_fitness call, one evolution.build, then one whole generation of loop.Evolution (LoopConfig.from_spec of
the profile's evomerge section): start() (generation 0) and one step(), with builds, validity checks, fitness
evaluations, cache hits, hashing and diversity counted by wrapping the loop's own functions (no copy of its
logic). Appends to bench/RESULTS.md (or --out).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import itertools
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit, machine_line  # noqa: E402 - bench/ is not a package

import torch  # noqa: E402
import yaml  # noqa: E402

from shared.model.config import TRMTitansMAGConfig  # noqa: E402
from shared.model.modeling import TRMTitansMAG  # noqa: E402

DELTA_SCALE = 0.01
DELTA_FLOOR = 0.02


# -- the machine's other load --

def _busy_cpu_s() -> float:
    """CPU seconds all processes have used since boot (/proc/stat, idle and iowait excluded)."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def other_processes() -> list[str]:
    """Short command lines of the other Python processes running now (what shares the cores)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in (os.getpid(), os.getppid()):
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if argv and "python" in Path(argv[0]).name:
            found.append(" ".join(Path(a).name if "/" in a else a for a in argv[1:4])[:80])
    return sorted(set(found))


class Load:
    """Mean CPU used by the rest of the machine while this script ran."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_cpu_s(), _own_cpu_s()
        self.seen = set(other_processes())

    def line(self) -> str:
        wall = time.perf_counter() - self.t0
        others = max(0.0, (_busy_cpu_s() - self.busy0) - (_own_cpu_s() - self.own0)) / wall
        self.seen |= set(other_processes())
        procs = "; ".join(sorted(self.seen)) or "none"
        return (f"- concurrency: the rest of the machine used {others:.2f} cores on average during this run "
                f"(/proc/stat minus this process); other Python processes seen: {procs}")


# -- families --

def profile_yaml(profile: str) -> dict:
    """configs/<profile>.yaml's phases, without the pydantic layer (as bench/model_bench.py reads it)."""
    return yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text())["phases"]


def family(profile: str) -> tuple[TRMTitansMAG, list[TRMTitansMAG]]:
    """(ancestor, [parents]) as the module doc describes; every model in eval mode."""
    cog = profile_yaml(profile)["cognate"]
    model = cog["model"]
    torch.manual_seed(cog["init_seed"])
    ancestor = TRMTitansMAG(TRMTitansMAGConfig(**model, active_ltm_slots=model["ltm_slots"])).eval()
    parents = []
    for v in cog["variants"]:
        m = copy.deepcopy(ancestor)
        for layer in m.net.layers:
            layer.memory.set_active_slots(v["ltm_slots"])
        m.config.active_ltm_slots, m.config.act_threshold = v["ltm_slots"], v["act_threshold"]
        g = torch.Generator().manual_seed(v["seed"])
        with torch.no_grad():
            for p in m.parameters():
                sigma = DELTA_SCALE * max(float(p.detach().pow(2).mean().sqrt()), DELTA_FLOOR)
                p.add_(torch.randn(p.shape, generator=g).mul_(sigma))
        parents.append(m.eval())
    return ancestor, parents


def merged_params(state) -> int:
    from services.evomerge.core.merge import is_mask

    return sum(t.numel() for k, t in state.items() if not is_mask(k))


# -- timing --

def timed(fn, repeats: int, slow_s: float):
    """(median s, runs, the last run's result). The previous result is dropped before each run (memory)."""
    times, out = [], None
    for _ in range(repeats):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if times[0] > slow_s:
            break
    return statistics.median(times), len(times), out


# -- part 1: merge throughput at default size --

def merge_throughput(repeats: int, slow_s: float) -> list[str]:
    from services.evomerge.core.combos import (MergeHyper, apply_merge_combo, combo_stages, derive_dfs_steps,
                                               model_state)

    # the module (services.evomerge.core's `merge` attribute is combos.merge, the function)
    M = importlib.import_module("services.evomerge.core.merge")
    evo = profile_yaml("default")["evomerge"]
    p, density, seed = float(evo["dare_drop_prob"]), float(evo["ties_density"]), int(evo["seed"])
    t0 = time.perf_counter()
    ancestor, parents = family("default")
    setup_s = time.perf_counter() - t0
    anc = model_state(ancestor)
    states = [model_state(m) for m in parents]
    n = merged_params(anc)
    k = len(parents)
    layers = ancestor.config.num_layers
    ws = [1.0 / k] * k
    rows = []

    def row(name: str, what: str, inputs: int, fn):
        s, runs, out = timed(fn, repeats, slow_s)
        rows.append(f"| {name} | {what} | {inputs} | {s:.3f} | {runs} | {n / s / 1e6:,.1f} | "
                    f"{n * inputs / s / 1e6:,.1f} |")
        print(rows[-1], flush=True)
        return out

    deltas = row("task_vectors", "δ_i = θ_i − θ_anc, 3 parents", k + 1, lambda: M.task_vectors(states, anc))
    combined = row("linear", "Σ w_i δ_i, w = 1/3", k, lambda: M.linear(deltas, ws))
    row("slerp_many", "pairwise SLERP of the 3 δ, t_i = 1/i", k, lambda: M.slerp_many(deltas))
    row("dare", f"each δ_i, p = {p:g} (seeded)", k,
        lambda: [M.dare(d, p, torch.Generator().manual_seed(seed)) for d in deltas])
    trimmed = row("ties_trim", f"each δ_i, density = {density:g} (kthvalue per tensor)", k,
                  lambda: [M.ties_trim(d, density) for d in deltas])
    row("ties_elect", "sign election + disjoint mean of the 3 trimmed δ", k, lambda: M.ties_elect(trimmed, ws))
    trimmed = None   # free (the closures above still name it, so no `del`)
    masks = M.union_masks(states)
    merged = row("add_task_vector", "θ_anc + combined δ, masks = union", 2,
                 lambda: M.add_task_vector(anc, combined, masks=masks))
    combined = deltas = None
    candidates = [merged, *states]
    choice = M.layer_choice("abc", layers, len(candidates))
    row("frankenmerge", "layers from [merged, θ_1..θ_3], \"abc\"", len(candidates),
        lambda: M.frankenmerge(candidates, choice))
    steps = derive_dfs_steps(choice, seed=seed)
    row("dfs", f"the same sourcing + 1 repeated layer ({len(steps)} steps)", len(candidates),
        lambda: M.dfs(candidates, steps))
    candidates = merged = None
    combo_rows = []
    for c in range(8):
        hyper = MergeHyper(dare_p=p, ties_density=density, seed=seed + c)
        s, runs, _ = timed(lambda: apply_merge_combo(parents, c, ancestor=ancestor, hyper=hyper), repeats, slow_s)
        combo_rows.append(f"| combo {c} | {' → '.join(combo_stages(c))} | {k + 1} | {s:.3f} | {runs} | "
                          f"{n / s / 1e6:,.1f} | {n * (k + 1) / s / 1e6:,.1f} |")
        print(combo_rows[-1], flush=True)
    cfg = ancestor.config
    head = (f"### Merge throughput at `default` size\n\n"
            f"- model: `default` profile's TRMTitansMAG ({cfg.num_layers} layers, d {cfg.hidden_dim}, vocab "
            f"{cfg.vocab_size:,}), fp32, CPU; N = {n:,} merged parameters per model (memory masks excluded); "
            f"family: ancestor (all {cfg.ltm_slots:,} slots) + 3 parents (slots "
            f"{', '.join(str(m.config.active_ltm_slots) for m in parents)}; δ ~ N(0, σ²), σ = {DELTA_SCALE} × "
            f"max(RMS θ, {DELTA_FLOOR}) per tensor), built in {setup_s:.1f} s",
            f"- median of {repeats} runs; `runs` < {repeats}: the first run took > {slow_s:g} s and was the only one; "
            f"k = input models read; **params/s = N × k / s** (parameters read per second); N / s = merged "
            f"parameters written per second. Operators on state dicts (services.evomerge.core.merge), as a combo "
            f"calls them; combos = combos.apply_merge_combo on the models (task vectors + 3 stages + building the "
            f"merged model), profile hyperparameters (p {p:g}, density {density:g}), seed {seed} + combo_id",
            "",
            "| operation | what | k | s | runs | N / s (M/s) | **params/s (M/s)** |",
            "|---|---|---:|---:|---:|---:|---:|")
    return [*head, *rows, *combo_rows, ""]


# -- part 2: evaluation cost per generation --

def fitness_data(profile, tmp: Path):
    """(batches, mc records, tokenizer, description) from the profile's own prepared data; random tokens and no
    MC records when the data cannot be prepared."""
    spec = profile.phases.evomerge
    model = profile.phases.cognate.model
    try:
        from services.dataset.core.prepare import prepare_datasets
        from services.dataset.core.runner import training_texts
        from shared.data.curriculum import Phase1Dataset
        from shared.data.tokenizer import train_bpe_tokenizer

        dspec = profile.phases.datasets
        if dspec.tokenizer.kind != "bpe":
            raise RuntimeError(f"tokenizer kind {dspec.tokenizer.kind} (the bench trains BPE only)")
        t0 = time.perf_counter()
        prepared = prepare_datasets(dspec, tmp / f"data-{profile.name}", seed=profile.seed)
        tok = train_bpe_tokenizer(training_texts(prepared.records), dspec.tokenizer.vocab_size)
        val = {name: splits["val"] for name, splits in prepared.records.items()}
        stream = Phase1Dataset(val, tok, seq_len=model.max_seq_len, seed=0, split="val")
        batches = list(itertools.islice(stream.batches(4, drop_last=True), spec.fitness_eval_batches))
        arc = [r for name in ("ARC-Easy", "ARC-Challenge") for r in prepared.records.get(name, {}).get("val", [])]
        what = (f"real data: the datasets phase's validation stream (local mirror, trained BPE "
                f"{dspec.tokenizer.vocab_size}; prepared in {time.perf_counter() - t0:.1f} s), MC = the first "
                f"{min(spec.fitness.mc_examples, len(arc))} of {len(arc)} ARC validation records")
        return batches, arc, tok, what
    except Exception as exc:  # noqa: BLE001 — the bench still measures, and says it fell back
        logging.warning("fitness data: %s: %s; random tokens instead", type(exc).__name__, exc)
        g = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(spec.fitness_eval_batches):
            ids = torch.randint(0, model.vocab_size, (4, model.max_seq_len), generator=g)
            labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
            batches.append({"input_ids": ids, "labels": labels})
        return batches, [], None, f"random tokens ({type(exc).__name__}: {exc}), no MC term"


@contextmanager
def instrumented():
    """Wrap the functions the loop calls (in services.evomerge.core.loop's and .evolution's namespaces) with
    counters and timers; restored on exit."""
    from services.evomerge.core import evolution as E
    from services.evomerge.core import loop as L

    stats = {}

    def wrap(module, name, key):
        original = getattr(module, name)

        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                n, s = stats.get(key, (0, 0.0))
                stats[key] = (n + 1, s + time.perf_counter() - t0)
        setattr(module, name, inner)
        return module, name, original

    saved = [wrap(L, "build", "build"), wrap(E, "is_valid_model", "validity"), wrap(L, "merge", "loser merge"),
             wrap(L, "model_hash", "hash"), wrap(L, "compute_diversity", "diversity")]
    try:
        yield stats
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def generation_cost(profile_name: str, repeats: int, tmp: Path) -> tuple[list[str], list[str], list[str]]:
    from services.cognate.core.model_metrics import profile_model
    from services.evomerge.core.combos import model_state
    from services.evomerge.core.validity import model_hash
    from services.evomerge.core.evolution import FitnessWeights, build, evaluate_fitness, generation_zero
    from services.evomerge.core.loop import Evolution, LoopConfig
    from shared.config import load_profile
    from shared.evaluation import above_chance, evaluate_arc

    profile = load_profile(profile_name)
    spec = profile.phases.evomerge
    cfg = LoopConfig.from_spec(spec)
    batches, arc, tok, data_what = fitness_data(profile, tmp)
    ancestor, parents = family(profile_name)
    n = merged_params(model_state(ancestor))
    max_len = profile.phases.cognate.model.max_seq_len

    def mc(model) -> float:
        r = evaluate_arc(model, tok, arc, limit=spec.fitness.mc_examples, max_length=max_len)
        return above_chance(r["accuracy"], r["chance"])

    mc_fn = mc if arc else None
    weights = FitnessWeights(nll=spec.fitness.nll, multiple_choice=spec.fitness.multiple_choice,
                             compute=spec.fitness.compute)
    t0 = time.perf_counter()
    c_ref = min(profile_model(p, batches).compute_per_token for p in parents)
    c_ref_s = time.perf_counter() - t0

    def fitness_fn(model):
        return evaluate_fitness(model, batches, weights=weights, reference_compute=c_ref, multiple_choice=mc_fn)

    validation = batches[:1]
    genome = generation_zero(parents=len(parents), population_size=cfg.population_size, seed=cfg.seed,
                             dare_p=cfg.dare_p, ties_density=cfg.ties_density)[0]
    parent = parents[0]
    nll_s = timed(lambda: evaluate_fitness(parent, batches, weights=weights, reference_compute=c_ref),
                  repeats, 1e9)[0]
    mc_s = timed(lambda: mc(parent), repeats, 1e9)[0] if arc else None
    fit_s = timed(lambda: fitness_fn(parent), repeats, 1e9)[0]
    build_s = timed(lambda: build(genome, parents, ancestor, mutation_scale=cfg.mutation_scale,
                                  validation_batches=validation), repeats, 1e9)[0]
    hash_s = timed(lambda: model_hash(parent), repeats, 1e9)[0]
    b, seq = batches[0]["input_ids"].shape
    standalone = (f"| {profile_name} | {n:,} | {len(batches)} × {b} × {seq} | "
                  f"{min(spec.fitness.mc_examples, len(arc)) if arc else 0} | {nll_s:.3f} | "
                  f"{'—' if mc_s is None else f'{mc_s:.3f}'} | {fit_s:.3f} | {build_s:.3f} | {hash_s:.4f} |")
    print(standalone, flush=True)

    evaluations = {"n": 0, "s": 0.0}

    def counted_fitness(model):
        t = time.perf_counter()
        try:
            return fitness_fn(model)
        finally:
            evaluations["n"] += 1
            evaluations["s"] += time.perf_counter() - t

    evo = Evolution(parents, ancestor, cfg, counted_fitness, validation_batches=validation)
    gen_rows = []
    walls = []
    for label, call in (("0 (start)", evo.start), ("1 (step)", evo.step)):
        evaluations.update(n=0, s=0.0)
        with instrumented() as st:
            t0 = time.perf_counter()
            record = call()
            wall = time.perf_counter() - t0
        walls.append(wall)
        get = lambda key: st.get(key, (0, 0.0))  # noqa: E731
        accounted = get("build")[1] + get("loser merge")[1] + evaluations["s"] + get("hash")[1] + get("diversity")[1]
        hits = get("hash")[0] - evaluations["n"]
        gen_rows.append(
            f"| {profile_name} | {label} | **{wall:.1f}** | {get('build')[0]} / {get('build')[1]:.1f} | "
            f"{get('validity')[1]:.1f} | {get('loser merge')[1]:.2f} | **{evaluations['n']}** / {evaluations['s']:.1f} "
            f"| {hits} | {get('hash')[0]} / {get('hash')[1]:.2f} | {get('diversity')[1]:.2f} | "
            f"{wall - accounted:.2f} | {record.best_fitness:.4f} |")
        print(gen_rows[-1], flush=True)
    projected = walls[0] + spec.generations * walls[1]
    notes = [f"- `{profile_name}`: {data_what}; fitness weights nll {weights.nll:g}, MC {weights.multiple_choice:g}, "
             f"compute {weights.compute:g}; C_ref from the 3 parents in {c_ref_s:.1f} s; validity checks on the first "
             f"fitness batch; population {cfg.population_size}, elites {cfg.elites}; projected whole loop = "
             f"start + {spec.generations} × step = **{projected:.0f} s** (no early stop; one step's cost, not "
             f"measured over {spec.generations} generations)"
             + ("; issue #7's target for the whole tiny phase: ≤ 180 s on 2 cores" if profile_name == "tiny" else "")]
    return [standalone], gen_rows, notes


def generation_section(profiles: list[str], repeats: int) -> list[str]:
    standalone, gens, notes = [], [], []
    with tempfile.TemporaryDirectory(prefix="evomerge-bench-") as tmp:
        for name in profiles:
            a, b, c = generation_cost(name, repeats, Path(tmp))
            standalone += a
            gens += b
            notes += c
    return ["### Evaluation cost per generation",
            "",
            "- family as in part 1 at each profile's size (untrained: random init + small deltas; ACT halting runs "
            "up to n_sup steps, so inference cost depends little on the weights)",
            *notes,
            "",
            f"One call each, median of {repeats}: evaluate_fitness without the MC term (NLL + compute: "
            "profile_model's inference pass and FLOP count); the MC term alone (ARC log-likelihood scoring); the "
            "loop's fitness (both); evolution.build of generation 0's combo 0 (merge + is_valid_model: forward, "
            "save/load round trip, loss); model_hash.",
            "",
            "| profile | params | fitness batches | MC items | evaluate_fitness NLL + compute s | MC term s | "
            "fitness (loop's) s | build s | model_hash s |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
            *standalone,
            "",
            "One generation of loop.Evolution: count / seconds. builds include their validity checks; evaluations = "
            "fitness_fn calls (cache misses); cache hits = hashed candidates whose hash was already scored (elites "
            "keep their score without hashing); other = ranking, recombination, bookkeeping.",
            "",
            "| profile | generation | **s** | builds / s | validity s | loser merge s | **evaluations** / s | "
            "cache hits | hashes / s | diversity s | other s | best fitness |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *gens,
            ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-default", action="store_true", help="skip part 1 (merge throughput at default size)")
    ap.add_argument("--skip-generation", action="store_true", help="skip part 2 (evaluation cost per generation)")
    ap.add_argument("--skip-ci", action="store_true", help="part 2 at tiny size only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-s", type=float, default=20.0, help="part 1: a first run longer than this is the only one")
    ap.add_argument("--out", default=None, help="write the section here instead of appending to bench/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # is_valid_model's save/load round trips
    load = Load()
    t0 = time.perf_counter()
    body = []
    if not args.skip_default:
        body += merge_throughput(args.repeats, args.slow_s)
        gc.collect()
    if not args.skip_generation:
        body += generation_section(["tiny"] + ([] if args.skip_ci else ["ci"]), args.repeats)
    total = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # ru_maxrss is in KiB on Linux
    lines = [f"## evomerge_bench — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "", machine_line(),
             f"- python {sys.version.split()[0]}, torch {torch.__version__}; torch threads 1; "
             f"whole bench {total:.0f} s; peak RSS {peak_gib:.2f} GiB",
             load.line(), "", *body]
    section = "\n".join(lines)
    emit(section, args.out)


if __name__ == "__main__":
    main()
