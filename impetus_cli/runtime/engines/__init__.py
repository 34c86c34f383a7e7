"""Backends behind one protocol (base.Engine): llama.cpp for GGUF, mlx-lm for MLX/safetensors."""
