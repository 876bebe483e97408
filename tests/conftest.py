"""Shared test set-up: CPU only, float32 matmuls exact enough for parity checks."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile many small programs: skipping LLVM's backend optimisation roughly halves compile time
# and changes no numerics the tests check.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CLI calls in tests compile afresh (a persistent cache shared across runs would hide compile costs and
# leave files under ~/.cache); tests/test_compile_cache.py turns it on in a temporary folder.
os.environ.setdefault("ENVTUNE_COMPILATION_CACHE", "off")
os.environ.setdefault("BFCL_PROJECT_ROOT", os.path.join(os.path.dirname(__file__), "..", ".bfcl_project_root"))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
