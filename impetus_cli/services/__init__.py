"""Use cases that combine the runtime and the client (doctor, wiring the coding assistants...).

No terminal or HTTP code lives here, so the commands and the TUI share them.
"""
