"""The EvoMerge phase as a job: the three Phase-1 models and their ancestor in, the evolved champion out.

Inputs: Cognate's "ancestor", "model_reasoning", "model_memory", "model_speed" (each with its tokenizer) and
the datasets phase's "datasets" + "tokenizer" (the held-out text fitness is measured on).

Data (DESIGN.md §7: deterministic, no wall clock): the validation split packed by Phase1Dataset (seed 0) into
batches of 4 × max_seq_len; the first `fitness_eval_batches` batches drive evolution, the next
`fitness_eval_batches` are a split evolution never sees (the champion-vs-parents report). Multiple choice:
ARC (Easy + Challenge) validation records in id order, the first `fitness.mc_examples` for evolution, the next
as many for the report.

Reported (gate metric first):
  evomerge/improvement           (best fitness − best generation-0 fitness) / best generation-0 fitness
  evomerge/best_fitness, evomerge/generation0_best_fitness, evomerge/generations, evomerge/stopped_early,
  evomerge/evaluations           fitness evaluations actually run (the cache saves the rest)
  evomerge/champion_holdout_fitness, evomerge/best_parent_holdout_fitness and their difference
  evomerge/champion_vs_best_parent, on the unseen split
  evomerge/distance_to_nearest_parent   L2 weight distance from the champion to the closest parent
W&B: generation, best_fitness, diversity, improvement per generation; the generation-0 per-combo table.
Progress per generation (step = generation; the run report's series): evomerge/best_fitness, /mean_fitness,
/worst_fitness (over the population), /diversity (relative to generation 0's), /improvement, /reinjected.
The population is checkpointed after every generation; a restarted job continues from the last one. On a GPU
job (device cuda/auto) the parents and the population live on the GPU when manage_population_memory says
population_size + 4 models fit in its free memory, else on the CPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
from itertools import islice
from pathlib import Path

import torch

from services.cognate.core.data import load_cognate_data
from services.evomerge.core.combos import combo_stages, model_state
from services.evomerge.core.evolution import FitnessWeights, evaluate_fitness, manage_population_memory
from services.evomerge.core.loop import Evolution, LoopConfig
from services.evomerge.core.merge import is_mask
from shared.data.curriculum import Phase1Dataset
from shared.data.tokenizer import save_tokenizer
from shared.errors import FailedPreconditionError
from shared.evaluation import evaluate_multiple_choice
from shared.evaluation.multiple_choice import above_chance, question_answer_template
from shared.model import load_model, save_model
from shared.runtime import JobResult
from shared.telemetry import metric_names as names
from shared.telemetry.wandb_run import Telemetry

log = logging.getLogger(__name__)
PARENTS = ("model_reasoning", "model_memory", "model_speed")
WANDB_PROJECT = "agent-forge-v2"


def fitness_data(data, seq_len: int, n_batches: int, mc_examples: int):
    """(evolution batches, unseen batches, evolution MC records, unseen MC records); see the module doc."""
    batches = list(islice(Phase1Dataset(data.val, data.tokenizer, seq_len=seq_len, seed=0, split="val")
                          .batches(4, drop_last=False), 2 * n_batches))
    if len(batches) < 2:
        raise FailedPreconditionError(f"the validation split gives {len(batches)} batch(es) of 4 × {seq_len} "
                                      f"tokens; fitness needs at least 2 (one to evolve on, one unseen)")
    cut = max(1, min(n_batches, len(batches) // 2))
    arc = sorted(data.val.get("ARC-Easy", []) + data.val.get("ARC-Challenge", []), key=lambda r: r.id)
    return batches[:cut], batches[cut:2 * cut], arc[:mc_examples], arc[mc_examples:2 * mc_examples]


def mc_scorer(records, tokenizer):
    """model -> above-chance accuracy on `records` (None when there are none: the term is then 0)."""
    if not records:
        return None

    def score(model) -> float:
        r = evaluate_multiple_choice(model, tokenizer, records, template=question_answer_template)
        return above_chance(r["accuracy"], r["chance"])
    return score


def weight_distance(a, b) -> float:
    sa, sb = model_state(a), model_state(b)
    return float(torch.sqrt(sum(((sa[n].double() - sb[n].double()) ** 2).sum() for n in sa if not is_mask(n))))


class EvoMergeRunner:
    def validate(self, spec) -> list[str]:
        return []   # the schema checks the spec; parents are checked when they are loaded

    def run(self, ctx):
        spec = ctx.spec
        with tempfile.TemporaryDirectory(prefix="agentforge-evomerge-") as tmp, \
                Telemetry().start(WANDB_PROJECT, f"phase2-evomerge-{ctx.request.request_id}",
                                  spec.model_dump(mode="json"), group=ctx.request.run_id or None,
                                  job_type="evomerge", dir=os.environ.get("WANDB_DIR")) as tel:
            work = Path(tmp)
            ctx.progress("loading the parents", fraction=0.01)
            refs = {name: ctx.request.input(name) for name in ("ancestor", *PARENTS)}
            models = {name: load_model(ctx.store.fetch(ref, work / name)).eval() for name, ref in refs.items()}
            data = load_cognate_data(ctx, work / "data")
            # the population (and the parents it is made from) on the GPU when it fits in its free memory
            device = "cpu"
            if ctx.request.device in ("cuda", "auto"):
                device = manage_population_memory([models["ancestor"]] * (spec.population_size + len(models)))
            models = {name: m.to(device) for name, m in models.items()}
            log.info("population on %s", device)
            ancestor, parents = models["ancestor"], [models[n] for n in PARENTS]
            seq_len = ancestor.config.max_seq_len
            train_b, unseen_b, train_mc, unseen_mc = fitness_data(data, seq_len, spec.fitness_eval_batches,
                                                                  spec.fitness.mc_examples)
            train_b, unseen_b = ([{k: t.to(device) for k, t in b.items()} for b in bs] for bs in (train_b, unseen_b))
            weights = FitnessWeights(spec.fitness.nll, spec.fitness.multiple_choice, spec.fitness.compute)

            def fitness_on(batches, mc_records):
                mc = mc_scorer(mc_records, data.tokenizer)
                ref = min(evaluate_fitness(p, batches, weights=weights).compute_per_token for p in parents)
                return lambda m: evaluate_fitness(m, batches, weights=weights, reference_compute=ref,
                                                  multiple_choice=mc)

            evo = Evolution(parents, ancestor, LoopConfig.from_spec(spec), fitness_on(train_b, train_mc),
                            validation_batches=train_b)
            ckpt = ctx.latest_checkpoint()
            if ckpt is not None:
                evo.restore(ctx.load_checkpoint_tensors(ckpt, "population"), ckpt.state)
                log.info("resumed evolution after generation %d", evo.history[-1].generation)

            def on_generation(record):
                tensors, meta = evo.state()
                ctx.save_checkpoint(record.generation, tensors={"population": tensors}, state=meta)
                tel.log({names.GENERATION: record.generation, names.BEST_FITNESS: record.best_fitness,
                         names.DIVERSITY: record.diversity, names.IMPROVEMENT: record.improvement})
                if record.generation == 0:
                    rows = [[i.genome.combo_id, "/".join(combo_stages(i.genome.combo_id)), i.fitness.score,
                             i.fitness.nll, i.fitness.mc_above_chance, i.fitness.compute_per_token]
                            for i in evo.population if i.genome is not None]
                    tel.table("evomerge/generation0_combos",
                              ["combo_id", "stages", "fitness", "nll", "mc_above_chance", "compute_per_token"], rows)
                ctx.progress(f"generation {record.generation}", step=record.generation, total_steps=spec.generations,
                             fraction=0.05 + 0.85 * record.generation / max(1, spec.generations),
                             metrics={"evomerge/best_fitness": record.best_fitness,
                                      "evomerge/improvement": record.improvement,
                                      "evomerge/diversity": record.diversity,
                                      "evomerge/reinjected": float(record.reinjected),
                                      **({"evomerge/mean_fitness": sum(record.fitness) / len(record.fitness),
                                          "evomerge/worst_fitness": min(record.fitness)} if record.fitness else {})})

            last = evo.run(on_generation)
            champion = evo.champion()
            ctx.progress("reporting", fraction=0.92)
            unseen = fitness_on(unseen_b, unseen_mc)
            champion_unseen = unseen(champion.model).score
            best_parent_unseen = max(unseen(p).score for p in parents)
            metrics = {
                "evomerge/improvement": last.improvement,
                "evomerge/best_fitness": last.best_fitness,
                "evomerge/generation0_best_fitness": evo.best0,
                "evomerge/generations": float(last.generation),
                "evomerge/stopped_early": float(evo.stopped_early),
                "evomerge/evaluations": float(evo.evaluations),
                "evomerge/champion_holdout_fitness": champion_unseen,
                "evomerge/best_parent_holdout_fitness": best_parent_unseen,
                "evomerge/champion_vs_best_parent": champion_unseen - best_parent_unseen,
                "evomerge/distance_to_nearest_parent": min(weight_distance(champion.model, p) for p in parents),
            }
            tel.summary(metrics)
            ctx.progress("publishing", fraction=0.97, metrics=metrics)
            out = save_model(champion.model.to("cpu"), work / "champion")
            tok_dir = work / "tokenizer"
            save_tokenizer(data.tokenizer, tok_dir)
            with ctx.open_artifact("champion", kind="model", tokenizer="tokenizer",
                                   parents=[refs["ancestor"], *(refs[n] for n in PARENTS)],
                                   config={**champion.model.config.to_dict(), "lineage": champion.lineage}) as w:
                for f in sorted(out.iterdir()):
                    w.add_file(f.name, f)
                w.add_dir("tokenizer", tok_dir)
                w.set_metrics({"fitness": champion.fitness.score, "nll": champion.fitness.nll,
                               "holdout_fitness": champion_unseen})
        return JobResult(artifacts=(w.ref,), metrics=metrics)
