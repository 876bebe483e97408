"""Public HF interop API: `hf_io.load_pretrained(dir)` → NNX Qwen3, `hf_io.save_pretrained(model, dir)`.

Implementation lives in `models/hf_io.py`; this module is the documented entry point.
"""
from models.hf_io import CheckpointError, NotAQwen3Checkpoint, export_tensors, load_pretrained, save_pretrained

__all__ = ["load_pretrained", "save_pretrained", "export_tensors", "CheckpointError", "NotAQwen3Checkpoint"]
