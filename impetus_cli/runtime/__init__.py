"""Everything that is neither presentation nor HTTP. Usable as a library.

Rule: nothing under runtime imports typer, rich, textual or aiohttp; llama_cpp and mlx are
imported lazily inside the engine that needs them.
"""
