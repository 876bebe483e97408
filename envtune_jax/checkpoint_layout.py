"""The file names of an envtune model checkpoint, without JAX: shared by the writer (checkpointing.py)
and the command line's checks that run before anything heavy is imported.

    <ckpt>/model_config.json   the Qwen3Config ({"model": {...}, "metadata": {...}})
    <ckpt>/params/             Orbax PyTree checkpoint of the parameters
    <ckpt>/tokenizer/          the source's tokenizer files, when it had them
"""

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
