"""Remote engines: OpenAI-compatible servers (vLLM, SGLang, llama-server, LM Studio, exo,
another `impetus serve`) whose models this server lists and proxies as ``NAME/MODEL``.

- ``config``: the ``[[remote]]`` tables and ``--remote [NAME=]URL``, checked.
- ``wire``: runtime requests -> the upstream's chat/completions/embeddings JSON.
- ``stream``: the upstream's SSE events -> GenerationChunk (text, reasoning, tool calls, usage).
- ``http``: a standard-library HTTP client: pooled connections, timeouts, and closing the
  connection of a request whose client hung up.
- ``upstream``: one upstream's health (probed with backoff in its own thread) and its models.
- ``registry``: ``Remotes``, what the ModelManager routes remote names to.

Nothing here imports aiohttp (runtime never does): requests run in the server's worker threads.
The package's ``__init__`` imports nothing, so ``runtime.config`` can use ``remote.config``
without pulling in the rest.
"""
