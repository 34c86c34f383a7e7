"""Typed keys for what the application holds (aiohttp's web.AppKey)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.manager import ModelManager

MANAGER = web.AppKey("manager", ModelManager)
SETTINGS = web.AppKey("settings", Settings)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
STARTED = web.AppKey("started", float)
# The cancel flags of the generations being sent; shutdown sets them all.
ACTIVE = web.AppKey("active", set[threading.Event])
STOPPING = web.AppKey("stopping", asyncio.Event)  # set when the server begins to shut down
SUBSCRIBERS = web.AppKey("subscribers", list[int])  # [readers of /impetus/events]
REQUEST_LOG = web.RequestKey("impetus_log", str)  # the request's summary for the access log
