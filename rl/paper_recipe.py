"""The paper's recipe as data: every setting it (or the authors' verl 0.4.1 stack) fixes, per stage.

The one place in the code that holds the paper's figures ("Don't Just Fine-tune the Agent, Tune the
Environment", Lu et al., arXiv 2510.10197; docs/recipe-fidelity.md lists each figure with its source).
`envtune recipe show` prints a recipe beside this table, and the tests fail when a shipped recipe drifts
from it. A figure of None means the paper does not say; the card then shows the recipe's choice alone.

`kind` says whether a setting is part of the method ("method": any recipe, the tiny CPU one included,
must match it) or sized to the model and hardware ("scale": the paper-size recipes must match it, a
smoke recipe may shrink it). `scope` says whether a recipe sets it per stage or once for the whole run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

# The curriculum's stages, by the names the shipped stage files give them, in order.
PAPER_STAGES = ("stage1_syntax", "stage2_hints", "stage3_hard", "stage4_independent")

Source = Literal["paper", "verl 0.4.1"]


@dataclasses.dataclass(frozen=True)
class PaperSetting:
    key: str  # the name the recipe card reads the recipe's value under (rl/recipe_card.py)
    group: str  # data, budget, reward, feedback, prompt, limits, batch, sampling, loss, optimizer, old log-probs
    label: str
    figures: tuple[Any, Any, Any, Any]  # one per stage of PAPER_STAGES; None: the paper does not say
    source: Source = "paper"
    kind: Literal["method", "scale"] = "method"
    scope: Literal["stage", "run"] = "stage"
    approx: tuple[bool, ...] = (False,) * 4  # per stage: the paper gives it approximately ("~75"), 5% matches
    note: str = ""

    def figure(self, stage_name: str) -> Any:
        """The figure for a stage of the shipped curriculum, None for a stage the paper does not have."""
        return self.figures[PAPER_STAGES.index(stage_name)] if stage_name in PAPER_STAGES else None

    def is_approx(self, stage_name: str) -> bool:
        return stage_name in PAPER_STAGES and self.approx[PAPER_STAGES.index(stage_name)]


def _all(value: Any) -> tuple[Any, Any, Any, Any]:
    return (value,) * 4


PAPER_SETTINGS: tuple[PaperSetting, ...] = (
    PaperSetting(
        "data",
        "data",
        "training entries",
        ("stage1_easy", "base_train", "train", "train"),
        note="an easy subset; the 100 base-category training entries; all 400 (4 categories)",
    ),
    PaperSetting(
        "data_size",
        "data",
        "entries",
        (75, 100, 400, 400),
        kind="scale",
        approx=(True, False, False, False),
        note="stage 1: '~75'",
    ),
    PaperSetting("epochs", "budget", "epochs (budget)", _all(20), note="up to 20 epochs per stage"),
    PaperSetting("steps", "budget", "optimizer steps", _all(None), note="derived: epochs x entries / prompts"),
    PaperSetting(
        "advance",
        "budget",
        "stage switch",
        _all("plateau"),
        kind="scale",
        note="validation accuracy plateaued and gradient norm stable",
    ),
    PaperSetting("validation_every", "budget", "validate every (steps)", _all(None)),
    PaperSetting(
        "reward",
        "reward",
        "reward",
        ("syntax", "progress", "progress", "progress"),
        note="R1 = I_tool (R_format + R_tool); R_P",
    ),
    PaperSetting("hints", "feedback", "actionable hints", (False, True, True, False)),
    PaperSetting("format_feedback", "feedback", "format errors returned", (False, True, True, False)),
    PaperSetting("empty_turn_warning", "feedback", "missing-function warning", (False, True, True, False)),
    PaperSetting("max_steps_per_turn", "feedback", "steps per turn", _all(5)),
    PaperSetting(
        "prompt_style",
        "prompt",
        "prompt format",
        _all(None),
        note="the paper names no format; the recipe trains in the one evaluation uses",
    ),
    PaperSetting(
        "stage34_instructions",
        "prompt",
        "stage 3/4 instructions",
        (False, False, True, True),
        note="be resourceful; ask rather than invent arguments",
    ),
    PaperSetting("max_prompt_tokens", "limits", "max prompt tokens", _all(8192), kind="scale"),
    PaperSetting(
        "max_response_tokens", "limits", "max response tokens (episode)", (10000, 24576, 24576, 24576), kind="scale"
    ),
    PaperSetting("max_context_tokens", "limits", "context tokens", _all(32768), kind="scale"),
    PaperSetting("max_new_tokens_per_step", "limits", "tokens per step", _all(None)),
    PaperSetting(
        "prompts_per_step", "batch", "prompts per step", (16, 32, 32, None), kind="scale", note="stage 4 not stated"
    ),
    PaperSetting("samples_per_prompt", "batch", "rollouts per prompt", _all(16), kind="scale"),
    PaperSetting("updates_per_batch", "batch", "optimizer steps per batch", _all(1), scope="run"),
    PaperSetting("temperature", "sampling", "temperature", _all(1.0), scope="run"),
    PaperSetting("top_p", "sampling", "top-p", _all(1.0), scope="run"),
    PaperSetting("validation_sampling", "sampling", "validation", _all("greedy"), scope="run"),
    PaperSetting("eps_low", "loss", "clip eps low", _all(0.2), scope="run"),
    PaperSetting("eps_high", "loss", "clip eps high", _all(0.28), scope="run"),
    PaperSetting("dual_clip_c", "loss", "dual clip c", _all(10.0), scope="run"),
    PaperSetting("ratio_level", "loss", "ratio", _all("token"), scope="run"),
    PaperSetting("kl_coef", "loss", "KL coefficient", _all(0.1), scope="run"),
    PaperSetting("kl_estimator", "loss", "KL estimator", _all("k3"), scope="run"),
    PaperSetting("kl_clamp", "loss", "KL clamp", _all(10.0), scope="run"),
    PaperSetting("kl_reference", "loss", "KL reference", _all("reset each stage"), scope="run"),
    PaperSetting("entropy_coef", "loss", "entropy bonus", _all(0.001), scope="run"),
    PaperSetting("loss_agg_mode", "loss", "aggregation", _all("token-mean"), scope="run"),
    PaperSetting(
        "loss_weighting",
        "loss",
        "micro-batch weighting",
        _all(None),
        note="verl averages per-micro-batch means; its micro-batch size is not reported",
        scope="run",
    ),
    PaperSetting("advantage", "loss", "advantage", _all("(R - mean) / (std + 1e-06)"), scope="run"),
    PaperSetting(
        "advantage_std_ddof",
        "loss",
        "group std ddof",
        _all(1),
        source="verl 0.4.1",
        note="torch.std: the sample std",
        scope="run",
    ),
    PaperSetting("learning_rate", "optimizer", "learning rate", _all(1e-6), kind="scale", scope="run"),
    PaperSetting("lr_schedule", "optimizer", "schedule", _all("constant"), scope="run"),
    PaperSetting("betas", "optimizer", "AdamW betas", _all((0.9, 0.999)), scope="run"),
    PaperSetting("weight_decay", "optimizer", "weight decay", _all(0.01), scope="run"),
    PaperSetting("grad_clip", "optimizer", "gradient clip", _all(1.0), scope="run"),
    PaperSetting(
        "old_logprobs",
        "old log-probs",
        "old log-probs",
        _all("recompute"),
        source="verl 0.4.1",
        note="the actor recomputes them before the update",
        scope="run",
    ),
)
