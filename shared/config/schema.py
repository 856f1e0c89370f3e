"""The typed configuration of a pipeline run (a *profile*).

A profile is a complete config: every field below must appear in the YAML file (no silent defaults), so a
profile file is the whole truth about a run. Each phase's section is mirrored field for field by that
phase's typed spec message in proto/agentforge/v1/<phase>.proto; tests/config/test_proto_mirror.py keeps
the two in step. Adding a phase = a section here + its proto file + its entries in configs/*.yaml.

Validation errors name the dotted key and the file (see shared.config.load).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STRATEGIES = (
    "step", "mece", "falsify", "expert", "orthogonal",
    "doubt", "bayesian", "multidomain", "correct", "uncertain",
)
PHASES = ("datasets", "cognate", "evomerge", "reasoning_data", "quietstar", "bitnet")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class Section(BaseModel):
    """Base of every config block: unknown keys, wrong types and missing keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = Field(description="where tensors live; auto = cuda if present")
    torch_threads: Annotated[int, Field(ge=1, le=256)] = Field(
        description="intra-op torch threads of the embedded process (`agentforge run`); a service process "
                    "uses its AGENTFORGE_TORCH_THREADS (the deployment sizes each process)")
    deterministic: bool = Field(
        description="torch.use_deterministic_algorithms in the embedded process (`agentforge run`)")


class TelemetryConfig(Section):
    wandb_project: str = Field(min_length=1, description="W&B project name")
    wandb_mode: Literal["offline", "online", "disabled"] = Field(description="offline unless configured")
    log_every_steps: PosInt = Field(description="training log interval")


class TokenizerConfig(Section):
    kind: Literal["gpt2", "bpe"] = Field(description="gpt2: the original GPT-2 BPE; bpe: a ByteLevel BPE "
                                         "trained on the curriculum (small profiles)")
    vocab_size: Annotated[int, Field(ge=256, le=262_144)] = Field(description="tokens incl. special tokens")
    gpt2_dir: str = Field(min_length=1, description="folder with encoder.json + vocab.bpe (kind=gpt2)")


class DatasetsConfig(Section):
    sources: list[Literal["local_mirror", "hub", "synthetic"]] = Field(
        min_length=1, description="sources tried in this order for each dataset")
    mirror_dir: str = Field(min_length=1, description="local mirror of the publishers' files")
    required: list[str] = Field(min_length=1, description="datasets that must be provided")
    optional: list[str] = Field(description="datasets that may be missing (their share is redistributed)")
    max_examples_per_dataset: PosInt = Field(description="cap per dataset and split")
    seq_len: Annotated[int, Field(ge=8)] = Field(description="tokens per training sequence")
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = Field(description="held-out share of train data")
    on_bad_line: Literal["skip", "fail"] = Field(description="a malformed source line: skip (counted and "
                                                 "reported in the manifest) or fail the phase")
    tokenizer: TokenizerConfig

    @model_validator(mode="after")
    def _check(self) -> "DatasetsConfig":
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources has duplicates: {self.sources}")
        both = set(self.required) & set(self.optional)
        if both:
            raise ValueError(f"datasets listed as both required and optional: {sorted(both)}")
        return self


class ModelConfig(Section):
    """TRMTitansMAG architecture, shared by the three Phase-1 models and their ancestor."""

    num_layers: PosInt
    hidden_dim: Annotated[int, Field(ge=8)]
    num_heads: PosInt
    vocab_size: Annotated[int, Field(ge=256)] = Field(description="must equal the tokenizer's vocab size")
    max_seq_len: Annotated[int, Field(ge=8)]
    window: PosInt = Field(description="causal sliding-window attention span")
    persistent_tokens: NonNegInt = Field(description="learned tokens visible from every position")
    ltm_slots: PosInt = Field(description="neural-memory hidden width (largest variant's capacity)")
    memory_dim: PosInt = Field(description="neural-memory key/value width (the fast weights are "
                               "ltm_slots x memory_dim per layer and sequence)")
    memory_chunk_size: PosInt = Field(description="tokens per memory update chunk")
    n_latent_steps: PosInt = Field(description="TRM n: latent updates per cycle")
    t_cycles: PosInt = Field(description="TRM T: recursion cycles (first T-1 without grad)")
    n_sup: PosInt = Field(description="deep-supervision steps per batch")
    dropout: Annotated[float, Field(ge=0, lt=1)]

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})")
        return self


class OptimizerConfig(Section):
    """MuonGrokfast settings (DESIGN.md §5)."""

    muon_lr: PosFloat
    adamw_lr: PosFloat
    weight_decay: NonNegFloat
    grokfast_alpha: Annotated[float, Field(ge=0, lt=1)]
    grokfast_lambda: NonNegFloat
    qk_clip_threshold: PosFloat
    kl_coefficient: NonNegFloat


class MixWeights(Section):
    """Sampling weight of each data category."""

    math: NonNegFloat
    code: NonNegFloat
    qa: NonNegFloat
    commonsense: NonNegFloat
    language: NonNegFloat

    @model_validator(mode="after")
    def _check(self) -> "MixWeights":
        if self.math + self.code + self.qa + self.commonsense + self.language <= 0:
            raise ValueError("at least one mix weight must be positive")
        return self


class CognateVariant(Section):
    name: Literal["reasoning", "memory", "speed"]
    seed: Seed = Field(description="drives data order and dropout after the branch point")
    epochs: PosInt
    act_threshold: Annotated[float, Field(gt=0, le=1)] = Field(description="halt when p_halt >= this")
    ltm_slots: PosInt = Field(description="active memory units (<= model.ltm_slots; the rest masked)")
    mix: MixWeights


class CognateConfig(Section):
    model: ModelConfig
    variants: list[CognateVariant] = Field(min_length=3, max_length=3)
    init_seed: Seed = Field(description="one initialisation for all three models")
    warmup_fraction: Fraction = Field(description="share of training done jointly before the branch point")
    batch_size: PosInt
    grad_accumulation: PosInt
    grad_clip: PosFloat
    max_steps_per_epoch: PosInt = Field(description="caps an epoch (small profiles)")
    checkpoint_every_steps: PosInt
    optimizer: OptimizerConfig

    @model_validator(mode="after")
    def _check(self) -> "CognateConfig":
        names = [v.name for v in self.variants]
        if sorted(names) != ["memory", "reasoning", "speed"]:
            raise ValueError(f"variants must be reasoning, memory and speed once each, got {names}")
        if len({v.seed for v in self.variants}) != 3:
            raise ValueError("variants must have distinct seeds")
        for v in self.variants:
            if v.ltm_slots > self.model.ltm_slots:
                raise ValueError(f"variant {v.name}: ltm_slots {v.ltm_slots} > model.ltm_slots "
                                 f"{self.model.ltm_slots}")
        return self


class FitnessConfig(Section):
    """EvoMerge's fitness: F = nll·exp(−NLL) + multiple_choice·(MC accuracy above chance, normalised) +
    compute·min(1, C_ref / C) (services.evomerge.core.evolution.evaluate_fitness)."""

    nll: NonNegFloat = Field(description="weight of exp(-held-out NLL), the geometric-mean token probability")
    multiple_choice: NonNegFloat = Field(description="weight of the above-chance multiple-choice accuracy")
    compute: NonNegFloat = Field(description="weight of the compute proxy (cheapest parent's FLOPs/token / C)")
    mc_examples: PosInt = Field(description="fixed multiple-choice subset size (first N by id)")

    @model_validator(mode="after")
    def _check(self) -> "FitnessConfig":
        if self.nll + self.multiple_choice + self.compute <= 0:
            raise ValueError("at least one fitness weight must be > 0")
        return self


class EvoMergeConfig(Section):
    population_size: Annotated[int, Field(ge=2)]
    generations: Annotated[int, Field(ge=0, le=50)]
    elites: NonNegInt
    seed: Seed
    dare_drop_prob: Annotated[float, Field(ge=0, lt=1)]
    ties_density: Annotated[float, Field(gt=0, le=1)]
    mutation_scale: NonNegFloat
    diversity_reinject_below: Fraction
    early_stop_improvement: PosFloat
    fitness_eval_batches: PosInt
    fitness: FitnessConfig

    @model_validator(mode="after")
    def _check(self) -> "EvoMergeConfig":
        if self.elites >= self.population_size:
            raise ValueError(f"elites ({self.elites}) must be < population_size ({self.population_size})")
        return self


class TokenPrice(Section):
    """What a teacher model costs (USD per million tokens), for the API backend's cost limit."""

    model: str = Field(min_length=1)
    input_per_mtok: NonNegFloat
    output_per_mtok: NonNegFloat


REASONING_SOURCES = ("GSM8K", "SVAMP", "ASDiv", "StrategyQA", "MBPP")


class ReasoningDataConfig(Section):
    backend: Literal["offline", "openai", "local"]
    target_examples: PosInt
    strategies: list[Literal[STRATEGIES]] = Field(min_length=1)  # type: ignore[valid-type]
    sources: list[Literal[REASONING_SOURCES]] = Field(  # type: ignore[valid-type]
        min_length=1, description="datasets whose train split supplies the problems (never a test split)")
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)]
    shard_size: PosInt
    items_per_unit: PosInt = Field(description="source problems per work unit (a unit = a slice x a strategy)")
    near_duplicate_threshold: Fraction = Field(
        description="two strategies' reasoning for one problem more similar than this (word-trigram Jaccard) "
                    "is a near-duplicate; the later one is rejected")
    seed: Seed
    cost_limit_usd: NonNegFloat = Field(description="hard cap across all workers (API backend)")
    concurrency: PosInt
    api_base: str = Field(description="OpenAI-compatible base URL (backend=openai)")
    api_key_env: str = Field(min_length=1, description="environment variable holding the API key")
    model: str = Field(description="teacher model id or local directory")
    prices: list[TokenPrice] = Field(description="per-model token prices (backend=openai)")
    max_completion_tokens: PosInt = Field(description="completion budget per call; bounds a call's cost")
    request_timeout_s: PosFloat
    max_retries: NonNegInt = Field(description="retries on 429/5xx/timeouts (exponential backoff + jitter)")

    @model_validator(mode="after")
    def _check(self) -> "ReasoningDataConfig":
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies has duplicates: {self.strategies}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources has duplicates: {self.sources}")
        if self.backend != "offline" and not self.model:
            raise ValueError(f"backend {self.backend} needs a model")
        if self.backend == "openai":
            if not self.api_base:
                raise ValueError("backend openai needs api_base (an OpenAI-compatible base URL)")
            if self.cost_limit_usd <= 0:
                raise ValueError("backend openai needs cost_limit_usd > 0 (0 would refuse every call)")
            if self.model not in {p.model for p in self.prices}:
                raise ValueError(f"backend openai needs a price for model {self.model!r} in prices "
                                 f"(without one the cost limit cannot be enforced)")
        return self


class QuietStarConfig(Section):
    baking_epochs: PosInt
    baking_optimizer: OptimizerConfig
    format_adherence_target: Annotated[float, Field(gt=0, le=1)]
    rl_steps: NonNegInt
    num_thoughts: PosInt
    thought_length: PosInt
    lookahead_tokens: PosInt
    rl_optimizer: OptimizerConfig
    batch_size: PosInt
    seed: Seed
    baking_objective: Literal["sft", "kl"] = Field(
        description="sft: next-token loss on the reasoning and answer; kl: Prompt Baking's KL to a frozen "
                    "few-shot-prompted copy of the pre-baking model")
    eval_examples: PosInt = Field(description="held-out reasoning items per validation (format adherence, "
                                              "answer and token accuracy, thinking-token usage)")
    max_new_tokens: PosInt = Field(description="generation budget in the reasoning format (validation, GSM8K)")
    rl_seq_len: PosInt = Field(description="tokens per RL span: thoughts are sampled at every position of it")
    rl_batch_size: PosInt = Field(description="RL spans per step (batch_size is baking's)")
    anti_theater_every: PosInt = Field(description="RL steps between anti-theater checks (and checkpoints)")
    reward_threshold: PosFloat = Field(description="minimum advantage (nats) a thought needs to be reinforced; "
                                                   "raised x1.5 by each anti-theater rollback")


class BitNetConfig(Section):
    size_category: Literal["auto", "tiny", "small", "medium", "large"]
    embedding_bits: Literal[4, 8, 16]
    pack_format: Literal["2bit", "base3"]
    calibration_samples: PosInt
    lambda_warmup_steps: NonNegInt
    recovery_lr: PosFloat
    recovery_epochs: NonNegInt
    max_layer_drop: Fraction
    seed: Seed
    memory_init_bits: Literal[4, 8, 16, 32] = Field(
        description="storage of the neural memory's initial fast weights (per-row int4 or int8, float16 or "
                    "float32); "
                    "the fast weights themselves are computed in float at run time")


class PhasesConfig(Section):
    datasets: DatasetsConfig
    cognate: CognateConfig
    evomerge: EvoMergeConfig
    reasoning_data: ReasoningDataConfig
    quietstar: QuietStarConfig
    bitnet: BitNetConfig


class EvaluationConfig(Section):
    """Evaluation sizes every phase uses (shared.evaluation); 0 means the full split."""

    gsm8k_limit: NonNegInt = Field(description="GSM8K items scored by generation (a fixed, deterministic subset)")
    multiple_choice_limit: NonNegInt = Field(description="items per multiple-choice benchmark")
    max_new_tokens: PosInt = Field(description="generation budget per GSM8K item")
    perplexity_seq_len: PosInt = Field(description="window for WikiText perplexity")


class PhaseScheduling(Section):
    needs_accelerator: bool = Field(description="the phase's job holds an accelerator lease while it runs")


class SchedulingConfig(Section):
    """Per-phase scheduling settings (one entry per phase)."""

    datasets: PhaseScheduling
    cognate: PhaseScheduling
    evomerge: PhaseScheduling
    reasoning_data: PhaseScheduling
    quietstar: PhaseScheduling
    bitnet: PhaseScheduling


class CoordinatorConfig(Section):
    accelerators: PosInt = Field(description="lease capacity: accelerators the phase services can use")
    lease_ttl_s: PosFloat = Field(description="accelerator lease TTL on the coordinator's monotonic clock")
    unit_ttl_s: PosFloat = Field(description="work-unit lease TTL")
    poll_interval_s: PosFloat = Field(description="how often the coordinator polls running jobs")
    reuse_finished_phases: bool = Field(description="reuse a finished phase with equal inputs and config")
    phases: SchedulingConfig


class Gate(Section):
    """One row of a phase's gate table (DESIGN.md §7)."""

    metric: str = Field(min_length=3, description="metric the phase reports, e.g. cognate/gsm8k_acc")
    op: Literal[">=", ">", "<=", "<"]
    threshold: float
    mitigation: str = Field(min_length=1, description="the in-phase mitigation run before the gate")
    may_approve: bool = Field(description="whether ApproveGate may override a failure")

    @model_validator(mode="after")
    def _check(self) -> "Gate":
        phase = self.metric.split("/", 1)[0]
        if "/" not in self.metric or phase not in PHASES:
            raise ValueError(f"gate metric {self.metric!r} must be '<phase>/<name>' with a known phase")
        return self

    def passes(self, value: float) -> bool:
        return {">=": value >= self.threshold, ">": value > self.threshold,
                "<=": value <= self.threshold, "<": value < self.threshold}[self.op]


class GatesConfig(Section):
    """One gate table per phase; each gate's metric must belong to its phase."""

    datasets: list[Gate] = Field(min_length=1)
    cognate: list[Gate] = Field(min_length=1)
    evomerge: list[Gate] = Field(min_length=1)
    reasoning_data: list[Gate] = Field(min_length=1)
    quietstar: list[Gate] = Field(min_length=1)
    bitnet: list[Gate] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "GatesConfig":
        for phase in PHASES:
            for gate in getattr(self, phase):
                if not gate.metric.startswith(phase + "/"):
                    raise ValueError(f"gate {gate.metric!r} is listed under {phase} but names another phase")
        return self


class Profile(Section):
    """A complete pipeline config."""

    name: str = Field(min_length=1)
    description: str
    seed: Seed
    runtime: RuntimeConfig
    telemetry: TelemetryConfig
    coordinator: CoordinatorConfig
    evaluation: EvaluationConfig
    phases: PhasesConfig
    gates: GatesConfig

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        tok = self.phases.datasets.tokenizer
        model = self.phases.cognate.model
        want = 50_257 if tok.kind == "gpt2" else tok.vocab_size
        if tok.kind == "gpt2" and tok.vocab_size != 50_257:
            raise ValueError(f"phases.datasets.tokenizer.vocab_size must be 50257 for kind gpt2, "
                             f"got {tok.vocab_size}")
        if model.vocab_size != want:
            raise ValueError(f"phases.cognate.model.vocab_size ({model.vocab_size}) must equal the "
                             f"tokenizer's vocab size ({want})")
        if model.max_seq_len < self.phases.datasets.seq_len:
            raise ValueError(f"phases.cognate.model.max_seq_len ({model.max_seq_len}) < "
                             f"phases.datasets.seq_len ({self.phases.datasets.seq_len})")
        return self
