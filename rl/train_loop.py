"""The curriculum training loop behind `envtune train`: stages of GRPO on BFCL, resumable.

For each stage: reset the KL reference to the current weights, then iterate (rollouts of G samples
per prompt → one optimizer step) until the stage's budget (epochs over its data, capped by max_steps)
is spent or its advance rule says so; rollouts use the stage's limits; validate greedily every
`validation_every` steps; checkpoint every `checkpoint.every_steps` steps and at the end of the
stage; export HF safetensors at the end of every stage. Re-running the same command resumes from
the newest checkpoint that restores (stage, step, data position, PRNG, metrics history included).
The run directory is locked while it trains, and its bookkeeping (settings per resume, finished
marker) is rl/run_dir.py's; docs/runs-and-checkpoints.md describes the rules.

A stage's iterations run through the one GRPO loop (rl/grpo_loop.run_grpo); this module keeps what is the
curriculum's: the schedule and advance rule, the run record that a checkpoint saves, validation and
periodic checkpoints (the `_Curriculum` hook), the stage boundaries, and resume.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
from tqdm.auto import tqdm

from envtune_jax import config as config_lib
from envtune_jax import interrupt
from envtune_jax.environments.bfcl_env import BfclEpisode
from envtune_jax.folder_lock import hold_folder
from envtune_jax.mesh import make_mesh, resolve_mesh_shape
from envtune_jax.models import checkpointing, hf_io
from envtune_jax.progress import OnPhase, PhaseDisplay
from envtune_jax.rl.curriculum import AdvanceDecision, StageBudget, StageConfig, decide_advance, stage_budget
from envtune_jax.rl.grpo import PolicyLearner, summarize
from envtune_jax.rl.grpo_loop import (
    GrpoHook,
    MetricsLog,
    ProgressBar,
    build_learner,
    run_grpo,
    stage_sampling,
    stage_settings,
)
from envtune_jax.rl.metrics_log import MetricsWriter
from envtune_jax.rl.model_loader import load_run_model
from envtune_jax.rl.rollout import Trajectory
from envtune_jax.rl.run_checkpoint import RunCheckpointer
from envtune_jax.rl.run_config import RunConfig, stage_rollout
from envtune_jax.rl.run_dir import clear_finished, inspect_run_dir, mark_finished, record_settings
from envtune_jax.rl.stage_data import draw, load_subset


def _log(message: str) -> None:
    if jax.process_index() == 0:
        tqdm.write(message, file=sys.stderr)


def validate(
    learner: PolicyLearner, stage: StageConfig, entries, cfg: RunConfig, key, on_phase: OnPhase | None = None
) -> dict:
    """Greedy rollouts on the validation entries with the stage's prompt, limits and step cap, no augmentation."""
    env_cfg = dataclasses.replace(stage.environment, hints=False, format_feedback=False, empty_turn_warning=False)
    greedy = dataclasses.replace(stage_sampling(cfg, stage), greedy=True)
    progress = None if on_phase is None else (lambda phase, done=None, total=None: on_phase("validation", done, total))
    trajectories = learner.rollout(
        [[BfclEpisode(e, env_cfg)] for e in entries],
        stage.chat,
        greedy,
        stage_rollout(cfg, stage),
        key,
        on_phase=progress,
    )
    metrics = summarize(trajectories)
    return {f"val/{k}": v for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` did: `run_dir`, and whether it wrote final/ (False: the run had finished already and
    was left alone)."""

    run_dir: Path
    final_written: bool


def train(
    cfg: RunConfig, stages: list[StageConfig], allow_config_change: bool = False, rewrite_final: bool = False
) -> TrainResult:
    """Runs (or resumes) the curriculum in cfg.run_dir, which it locks for its duration. Before any model
    loads: a run trained with other settings is refused unless `allow_config_change`; a finished run is
    said so and left alone, unless `rewrite_final` (write final/ again from its last checkpoint)."""
    run_dir = Path(cfg.run_dir)
    resolve_mesh_shape(cfg.mesh, len(jax.devices()))  # a mesh that does not fit the devices: ConfigError
    with hold_folder(run_dir, "run directory", log=_log):
        checkpointer = RunCheckpointer(
            run_dir / "checkpoints", keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save
        )
        try:
            start = inspect_run_dir(run_dir, cfg, stages, checkpointer.all_steps(), allow_config_change)
            if rewrite_final and start.finished is None:
                raise config_lib.ConfigError(f"--rewrite-final: {run_dir} holds no finished run with these settings")
            if start.finished is not None and not rewrite_final:
                _log(
                    f"{run_dir}: this run finished at step {start.finished.get('step')} "
                    f"({', '.join(start.finished.get('stages', []))}); its model is in {run_dir / 'final'}. "
                    "Nothing to do (--rewrite-final writes final/ again; another run_dir starts a new run)"
                )
                return TrainResult(run_dir, final_written=False)
            if start.changes:
                _log(f"{run_dir}: continuing with changed settings: {'; '.join(start.changes)}")
            model, tokenizer_dir, record = _run_stages(cfg, stages, run_dir, checkpointer, clear=start.finished is None)
        finally:
            checkpointer.close()
        checkpointing.save_model(model, run_dir / "final", tokenizer_dir=tokenizer_dir, metadata={"run": str(run_dir)})
        if jax.process_index() == 0:
            mark_finished(run_dir, record["step"], stages)
    return TrainResult(run_dir, final_written=True)


def _resumed_message(record: dict, stages: list[StageConfig]) -> str:
    if record["stage_index"] >= len(stages):
        return f"resumed from step {record['step']}: every stage is done"
    name = stages[record["stage_index"]].name
    if not record["stage_started"]:
        return f"resumed from step {record['step']}, at the start of stage {name}"
    return f"resumed from step {record['step']} (stage {name}, step {record['step_in_stage']} of it)"


def _run_stages(cfg: RunConfig, stages: list[StageConfig], run_dir: Path, checkpointer: RunCheckpointer, clear: bool):
    """Loads the model, restores the newest readable checkpoint and trains the remaining stages; returns
    (model, tokenizer directory, record)."""
    mesh = make_mesh(cfg.mesh) if len(jax.devices()) > 1 else None
    loaded = load_run_model(cfg.model, mesh)
    model, tokenizer_dir = loaded.model, loaded.tokenizer_dir
    learner = build_learner(cfg, loaded, mesh)
    record = {
        "step": 0,
        "stage_index": 0,
        "step_in_stage": 0,
        "data_position": 0,
        "stage_started": False,
        "val_accuracy": [],
        "grad_norms": [],
        "decisions": [],
    }
    restored = checkpointer.restore_newest_readable(learner.state, _ref_or_params(learner), _log)
    if restored is not None:
        state, ref, record = restored
        learner.set_state(state, ref if learner.ref_params is not None else None)
        _log(_resumed_message(record, stages))
    if jax.process_index() == 0:
        record_settings(run_dir, cfg, stages, record["step"])
        if clear:
            clear_finished(run_dir)
    writer = MetricsWriter(run_dir / "logs", tensorboard=cfg.logging.tensorboard, resume_step=record["step"])
    # a Ctrl-C waits for an asynchronous save in flight (else the run would resume from the one before)
    release_hold = interrupt.hold_while(checkpointer.manager.is_saving_in_progress, "the checkpoint being written")
    key = jax.random.key(cfg.seed)
    try:
        for stage_index in range(record["stage_index"], len(stages)):
            stage = stages[stage_index]
            if not record["stage_started"]:
                learner.reset_reference()
                record.update(stage_started=True, step_in_stage=0, data_position=0, val_accuracy=[], grad_norms=[])
            length = prompt_length(learner.tokenizer, stage) if cfg.data.shortest_prompts_first else None
            entries = load_subset(stage.data, cfg.data.source, cfg.data.data_dir, cfg.data.limit_per_category, length)
            val_entries = (
                load_subset(
                    "validation", cfg.data.source, cfg.data.data_dir, cfg.data.validation_limit_per_category, length
                )
                if stage.validation_every
                else []
            )
            if stage.validation_entries:
                val_entries = val_entries[: stage.validation_entries]
            budget = stage_budget(stage, len(entries))
            _log(
                f"{stage.name}: {budget.steps} steps ({budget.binding} binds: {stage.epochs:g} epochs of "
                f"{len(entries)} entries = {budget.epoch_steps} steps, max_steps {stage.max_steps})"
            )
            bar = tqdm(
                total=budget.steps,
                initial=record["step_in_stage"],
                desc=stage.name,
                unit="step",
                disable=not cfg.logging.progress_bar or jax.process_index() != 0,
            )
            display = PhaseDisplay(bar)  # what the step is doing: rollout i/n episodes, environment, update, compiling
            curriculum = _Curriculum(
                cfg, stage, stage_index, budget, record, learner, checkpointer, val_entries, key, display
            )

            def groups_for(step: int, stage=stage, entries=entries, stage_index=stage_index):
                picked = draw(entries, record["data_position"], stage.prompts_per_step, cfg.seed + stage_index)
                return [[BfclEpisode(e, stage.environment) for _ in range(stage.samples_per_prompt)] for e in picked]

            run_grpo(
                learner,
                curriculum.steps(),
                groups_for,
                stage_settings(cfg, stage),
                key,
                hooks=(curriculum, MetricsLog(writer), ProgressBar(bar, display)),
                on_phase=display,
            )
            display.close()
            bar.close()
            if stage.export_hf:
                _log(f"{stage.name}: exporting HF safetensors to {run_dir / 'export' / stage.name}")
                out = hf_io.save_pretrained(
                    model, run_dir / "export" / stage.name, tokenizer_dir=tokenizer_dir, progress=False
                )
                _log(f"{stage.name}: exported {out}")
            record.update(stage_index=stage_index + 1, stage_started=False)
            checkpointer.save(record["step"], learner.state, _ref_or_params(learner), record)
        checkpointer.wait()
    finally:
        writer.close()
        release_hold()
    return model, tokenizer_dir, record


class _Curriculum(GrpoHook):
    """One stage's schedule and bookkeeping around the GRPO loop: `steps()` yields the global step index while
    the stage's advance rule says go on (the decision and its reason are logged and kept); before a step,
    the periodic checkpoint of the step just done; after it, the run record (steps, data position, gradient
    norms), validation when due, and the stage and decision in the step's metrics."""

    def __init__(
        self,
        cfg: RunConfig,
        stage: StageConfig,
        stage_index: int,
        budget: StageBudget,
        record: dict,
        learner: PolicyLearner,
        checkpointer: RunCheckpointer,
        val_entries,
        key,
        display: PhaseDisplay,
    ):
        self.cfg, self.stage, self.stage_index, self.budget, self.record = cfg, stage, stage_index, budget, record
        self.learner, self.checkpointer, self.val_entries, self.key, self.display = (
            learner,
            checkpointer,
            val_entries,
            key,
            display,
        )
        self.decision: AdvanceDecision | None = None

    def steps(self):
        record, stage = self.record, self.stage
        while True:
            self.decision = decide_advance(
                stage, self.budget.steps, record["step_in_stage"], record["val_accuracy"], record["grad_norms"]
            )
            if self.decision.advance:
                _log(f"{stage.name}: advancing — {self.decision.reason}")
                record["decisions"].append(
                    {"stage": stage.name, "step": record["step"], "reason": self.decision.reason}
                )
                return
            yield record["step"]

    def before_step(self, step: int) -> None:
        # the stage goes on: the periodic checkpoint of the step just done (the step that ends a stage is saved
        # after the loop, with the record of the stage boundary)
        if (
            self.record["step_in_stage"]
            and step % self.cfg.checkpoint.every_steps == 0
            and self.checkpointer.latest_step() != step
        ):
            self.display("checkpoint")
            self.checkpointer.save(step, self.learner.state, _ref_or_params(self.learner), self.record)

    def after_step(self, step: int, metrics: dict, trajectories: list[Trajectory]) -> None:
        record, stage = self.record, self.stage
        record["step"] += 1
        record["step_in_stage"] += 1
        record["data_position"] += stage.prompts_per_step
        record["grad_norms"].append(metrics["grad_norm"])
        if stage.validation_every and record["step_in_stage"] % stage.validation_every == 0:
            val = validate(
                self.learner,
                stage,
                self.val_entries,
                self.cfg,
                jax.random.fold_in(jax.random.fold_in(self.key, step), 1),
                on_phase=self.display,
            )
            record["val_accuracy"].append(val["val/accuracy"])
            metrics.update(val)
        metrics.update(stage=self.stage_index, stage_name=stage.name, decision=self.decision.reason)


def prompt_length(tokenizer, stage: StageConfig):
    from envtune_jax.chat.render import render_messages
    from envtune_jax.chat.tokenizer import encode_text

    def length(entry) -> int:
        episode = BfclEpisode(entry, stage.environment)
        text = render_messages(episode.reset(), episode.tools(), stage.chat.style, True, stage.chat.paper_variant)
        return len(encode_text(tokenizer, text))

    return length


def _ref_or_params(learner: PolicyLearner):
    return learner.ref_params if learner.ref_params is not None else learner.state.params
