"""One module per verb. Each defines ``register(app)``; cli.py discovers them by name.

Commands parse arguments, call the runtime (or client.py for a running server) and render with
Rich. They import nothing heavy at module level.
"""
