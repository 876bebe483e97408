"""RL: multi-turn rollouts, GRPO-family advantages and losses, the sharded train step, the curriculum."""
