"""The recipe card: every setting of every stage of a recipe beside the paper's figure (rl/paper_recipe.py).

`card_rows(run, stages)` reads, for each stage and each `PaperSetting`, the value the run will use (the
stage's budget from its data size, its rollout limits, the prompt it renders, ...) and compares it with
the paper's figure: "same", "differs", "paper silent" (no figure) or "no paper stage" (a stage the paper's
curriculum does not have). `render_card` lays the rows out as text for `envtune recipe show`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Sequence

from envtune_jax.rl.curriculum import StageBudget, StageConfig, plateau_first_step
from envtune_jax.rl.paper_recipe import PAPER_SETTINGS, PAPER_STAGES, PaperSetting
from envtune_jax.rl.rollout_config import RolloutConfig
from envtune_jax.rl.run_config import RunConfig, stage_budgets, stage_rollout

Status = Literal["same", "differs", "paper silent", "no paper stage"]


@dataclasses.dataclass(frozen=True)
class StageView:
    """What a stage runs with: its config, the run's, its budget and its rollout limits."""

    run: RunConfig
    stage: StageConfig
    budget: StageBudget
    rollout: RolloutConfig


@dataclasses.dataclass(frozen=True)
class CardRow:
    stage: str
    setting: PaperSetting
    value: Any  # compared with the paper's figure
    shown: str  # the value with the detail that explains it
    status: Status


def _steps(view: StageView) -> tuple[Any, str]:
    budget, stage = view.budget, view.stage
    cap = stage.max_steps if stage.max_steps is not None else "unset"
    return budget.steps, (
        f"{budget.steps} ({budget.binding} binds: {stage.epochs:g} epochs x {budget.data_size} "
        f"entries / {stage.prompts_per_step} = {budget.epoch_steps}; max_steps {cap})"
    )


def _advance(view: StageView) -> tuple[Any, str]:
    rule = view.stage.advance
    if rule.kind == "fixed":
        return "fixed", "fixed (the budget alone)"
    return "plateau", (
        f"plateau (patience {rule.patience}, min_delta {rule.min_delta:g}, grad-norm cv <= "
        f"{rule.grad_norm_cv_max:g} over {rule.grad_norm_window} steps; earliest at step "
        f"{plateau_first_step(view.stage)})"
    )


def _instructions(view: StageView) -> tuple[Any, str]:
    chat = view.stage.chat
    if chat.paper_variant != "stage34":
        return False, "no (stage 1/2 prompt)"
    where = "leading system message" if chat.style == "qwen_fc" else "paper-style system prompt"
    return True, f"yes ({where})"


def _advantage(view: StageView) -> tuple[Any, str]:
    loss = view.run.loss
    text = f"(R - mean) / (std + {loss.advantage_eps:g})" if loss.scale_advantages_by_std else "R - mean"
    return text, text


def _weighting(view: StageView) -> tuple[Any, str]:
    step = view.run.train_step
    if step.loss_weighting == "per_micro_batch":
        return step.loss_weighting, f"per_micro_batch (mean of {step.weighting_micro_batch_rows}-row micro-batch means)"
    return step.loss_weighting, "batch (the exact aggregate of the whole batch)"


def _schedule(view: StageView) -> tuple[Any, str]:
    warmup = view.run.optimizer.warmup_steps
    text = "constant" if not warmup else f"linear warm-up over {warmup} steps, then constant"
    return text, text


def _plain(read: Callable[[StageView], Any], detail: Callable[[StageView], str] | None = None):
    def value(view: StageView) -> tuple[Any, str]:
        raw = read(view)
        return raw, detail(view) if detail else _format(raw)

    return value


def _episode_cap(view: StageView) -> str:
    cap = view.stage.environment.max_steps_per_turn
    return "no cap" if cap is None else f"{cap} (one more tool-calling step ends the episode)"


def _batch(view: StageView) -> str:
    stage = view.stage
    trajectories = stage.prompts_per_step * stage.samples_per_prompt
    return f"{stage.prompts_per_step} (x {stage.samples_per_prompt} = {trajectories} trajectories)"


# How the card reads each PaperSetting's value from what the stage runs with: (value compared, text shown).
READERS: dict[str, Callable[[StageView], tuple[Any, str]]] = {
    "data": _plain(lambda v: v.stage.data),
    "data_size": _plain(lambda v: v.budget.data_size),
    "epochs": _plain(lambda v: v.stage.epochs),
    "steps": _steps,
    "advance": _advance,
    "validation_every": _plain(
        lambda v: v.stage.validation_every,
        lambda v: (
            "never"
            if not v.stage.validation_every
            else f"{v.stage.validation_every} ({v.stage.validation_entries or 'all'} entries, greedy)"
        ),
    ),
    "reward": _plain(lambda v: v.stage.environment.reward),
    "hints": _plain(lambda v: v.stage.environment.hints),
    "format_feedback": _plain(lambda v: v.stage.environment.format_feedback),
    "empty_turn_warning": _plain(lambda v: v.stage.environment.empty_turn_warning),
    "max_steps_per_turn": _plain(lambda v: v.stage.environment.max_steps_per_turn, _episode_cap),
    "prompt_style": _plain(lambda v: v.stage.chat.style),
    "stage34_instructions": _instructions,
    "max_prompt_tokens": _plain(lambda v: v.rollout.max_prompt_tokens),
    "max_response_tokens": _plain(lambda v: v.rollout.max_response_tokens),
    "max_context_tokens": _plain(lambda v: v.rollout.max_context_tokens),
    "max_new_tokens_per_step": _plain(lambda v: v.rollout.max_new_tokens_per_step),
    "prompts_per_step": _plain(lambda v: v.stage.prompts_per_step, _batch),
    "samples_per_prompt": _plain(lambda v: v.stage.samples_per_prompt),
    "updates_per_batch": _plain(lambda v: 1),  # the train loop takes one optimizer step per rollout batch
    "temperature": _plain(lambda v: "greedy" if v.run.sampler.greedy else v.run.sampler.temperature),
    "top_p": _plain(lambda v: "greedy" if v.run.sampler.greedy else v.run.sampler.top_p),
    "validation_sampling": _plain(lambda v: "greedy"),  # rl/train_loop.validate
    "eps_low": _plain(lambda v: v.run.loss.eps_low),
    "eps_high": _plain(lambda v: v.run.loss.eps_high),
    "dual_clip_c": _plain(lambda v: v.run.loss.dual_clip_c),
    "ratio_level": _plain(lambda v: v.run.loss.ratio_level),
    "kl_coef": _plain(lambda v: v.run.loss.kl_coef),
    "kl_estimator": _plain(lambda v: "k3" if v.run.loss.kl_estimator == "low_var_kl" else v.run.loss.kl_estimator),
    "kl_clamp": _plain(lambda v: v.run.loss.kl_clamp),
    "kl_reference": _plain(lambda v: "reset each stage"),  # rl/train_loop: reset_reference at every stage start
    "entropy_coef": _plain(lambda v: v.run.loss.entropy_coef),
    "loss_agg_mode": _plain(lambda v: v.run.loss.loss_agg_mode),
    "loss_weighting": _weighting,
    "advantage": _advantage,
    "advantage_std_ddof": _plain(lambda v: v.run.loss.advantage_std_ddof),
    "learning_rate": _plain(lambda v: v.run.optimizer.learning_rate),
    "lr_schedule": _schedule,
    "betas": _plain(lambda v: (v.run.optimizer.b1, v.run.optimizer.b2)),
    "weight_decay": _plain(lambda v: v.run.optimizer.weight_decay),
    "grad_clip": _plain(lambda v: v.run.optimizer.grad_clip),
    "old_logprobs": _plain(lambda v: v.run.train_step.old_logprobs),
}


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_format(v) for v in value) + ")"
    return "-" if value is None else str(value)


def _matches(value: Any, figure: Any, approx: bool) -> bool:
    if isinstance(figure, tuple):
        return (
            isinstance(value, tuple)
            and len(value) == len(figure)
            and all(_matches(v, f, approx) for v, f in zip(value, figure))
        )
    if isinstance(figure, bool) or isinstance(value, bool) or isinstance(figure, str) or isinstance(value, str):
        return value == figure
    if isinstance(figure, (int, float)) and isinstance(value, (int, float)):
        return math.isclose(value, figure, rel_tol=0.05 if approx else 1e-9)
    return value == figure


def card_rows(run: RunConfig, stages: Sequence[StageConfig]) -> list[CardRow]:
    """One row per stage and paper setting, in the order of PAPER_SETTINGS."""
    rows = []
    for stage, budget in zip(stages, stage_budgets(run, stages)):
        view = StageView(run, stage, budget, stage_rollout(run, stage))
        for setting in PAPER_SETTINGS:
            value, shown = READERS[setting.key](view)
            figure = setting.figure(stage.name)
            if stage.name not in PAPER_STAGES:
                status: Status = "no paper stage"
            elif figure is None:
                status = "paper silent"
            else:
                status = "same" if _matches(value, figure, setting.is_approx(stage.name)) else "differs"
            rows.append(CardRow(stage.name, setting, value, shown, status))
    return rows


def paper_text(setting: PaperSetting, stage_name: str) -> str:
    figure = setting.figure(stage_name)
    if figure is None:
        return "not stated"
    text = ("~" if setting.is_approx(stage_name) else "") + _format(figure)
    return text if setting.source == "paper" else f"{text} [{setting.source}]"


MARKS: dict[Status, str] = {
    "same": "=",
    "differs": "DIFFERS",
    "paper silent": "paper silent",
    "no paper stage": "no paper stage",
}


def _mark(row: CardRow, status: Status) -> str:
    return f"{MARKS[status]} ({row.setting.kind})" if status == "differs" else MARKS[status]


def _table(rows: Sequence[CardRow], stage_name: str, status_of: Callable[[CardRow], Status]) -> list[str]:
    labels = [f"{r.setting.group}: {r.setting.label}" for r in rows]
    papers = [paper_text(r.setting, stage_name) for r in rows]
    label_w, shown_w, paper_w = max(map(len, labels)), min(max(len(r.shown) for r in rows), 64), max(map(len, papers))
    lines = [f"  {'setting':<{label_w}}  {'recipe':<{shown_w}}  {'paper':<{paper_w}}  match"]
    for row, label, paper in zip(rows, labels, papers):
        lines.append(f"  {label:<{label_w}}  {row.shown:<{shown_w}}  {paper:<{paper_w}}  {_mark(row, status_of(row))}")
    return lines


def render_card(run: RunConfig, stages: Sequence[StageConfig], title: str) -> str:
    """The card as text: per stage its own settings, then the run-wide ones once, then the paper's notes."""
    rows = card_rows(run, stages)
    lines = [
        f"recipe card: {title}",
        "paper: Lu et al., arXiv 2510.10197, and verl 0.4.1 (the authors' stack) where marked; docs/recipe-fidelity.md",
        "",
    ]
    for stage in stages:
        lines.append(f"== {stage.name}")
        stage_rows = [r for r in rows if r.stage == stage.name and r.setting.scope == "stage"]
        lines += _table(stage_rows, stage.name, lambda r: r.status)
        lines.append("")
    first = stages[0].name
    run_rows = [r for r in rows if r.stage == first and r.setting.scope == "run"]

    def across_stages(row: CardRow) -> Status:  # a run-wide setting differs if it differs in any stage
        statuses = {r.status for r in rows if r.setting is row.setting}
        return "differs" if "differs" in statuses else row.status

    lines.append("== every stage")
    lines += _table(run_rows, first, across_stages)
    lines += ["", "notes on the paper's figures:"]
    lines += [f"  {s.label}: {s.note}" for s in PAPER_SETTINGS if s.note]
    lines.append("")
    for kind in ("method", "scale"):
        labels = list(dict.fromkeys(r.setting.label for r in rows if r.status == "differs" and r.setting.kind == kind))
        lines.append(f"{kind} settings that differ from the paper: {', '.join(labels) if labels else 'none'}")
    return "\n".join(lines)
