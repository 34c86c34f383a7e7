"""The OpenAI-compatible HTTP server (aiohttp). Handlers translate; the manager does the work."""
