"""Tool environments (BFCL V3 multi-turn, a synthetic task), rewards, hints and evaluation. No JAX here.

base (episode interface) · config (EnvironmentConfig) · episode_core (turn protocol, reward bookkeeping) ·
bfcl_data / splits / tfds_builder (data) · executor / gt_calls (safe execution) · tool_backend (an episode's
API state) / tool_host / hosted_backend (the tool process and its time limit) · bfcl_env · hints · rewards ·
synthetic · protocol (official decoding) · policies · evaluation / eval_report · pool.
See docs/environments.md and docs/robustness.md.
"""
