"""`impetus tui`: a live dashboard of a running `impetus serve`.

The app is a client of the server's status API (client.py), so it can watch a server started
anywhere. One worker thread polls the server twice a second and keeps only the newest snapshot;
the UI renders whatever is newest on a timer, so a slow terminal never queues stale updates.
Blocking actions (load, unload, pull, remove, start a server) run in workers that post back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Sparkline, Static

from impetus_cli.errors import ImpetusError
from impetus_cli.runtime.status import ServerStatus
from impetus_cli.tui import widgets
from impetus_cli.tui.screens import ConfirmScreen, PullScreen

# (label, width): fixed widths keep the tables steady while rows change twice a second.
LOADED_COLUMNS = (
    ("model", 22),
    ("fmt", 5),
    ("quant", 7),
    ("ctx", 6),
    ("memory", 8),
    ("keep", 6),
    ("busy", 4),
    ("queue", 5),
    ("hit", 4),
    ("tok/s", 6),
)
LOG_COLUMNS = (
    ("time", 8),
    ("model", 20),
    ("prompt", 7),
    ("compl.", 6),
    ("TTFT s", 7),
    ("tok/s", 6),
    ("status", 6),
)
LOCAL_COLUMNS = (("model", 20), ("format", 6), ("quant", 7), ("context", 7), ("state", 6))


class StatusSource(Protocol):
    """What the dashboard needs from client.ImpetusClient."""

    base_url: str

    def status(self) -> ServerStatus: ...
    def models(self) -> list[dict[str, Any]]: ...
    def load(self, name: str) -> Any: ...
    def unload(self, name: str) -> Any: ...


@dataclass(frozen=True)
class LocalActions:
    """Work done on this machine rather than through the server."""

    pull: Callable[[str, Callable[[int, int], None]], str]  # name, progress(done, total) -> name
    remove: Callable[[str], None]
    start_server: Callable[[], str]  # returns a description of what was started


class Dashboard(App[None]):
    TITLE = "Impetus"
    CSS_PATH = "dashboard.tcss"
    BINDINGS = [
        Binding("l", "load", "Load"),
        Binding("u", "unload", "Unload"),
        Binding("p", "pull", "Pull"),
        Binding("d", "remove", "Remove"),
        Binding("s", "start_server", "Start server"),
        Binding("r", "refresh", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self, client: StatusSource, actions: LocalActions | None = None, *, interval: float = 0.5
    ):
        super().__init__()
        self.client = client
        self.actions = actions
        self.interval = interval
        self.sub_title = client.base_url
        self._latest: tuple[ServerStatus, list[dict[str, Any]]] | None = None
        self._error: str | None = None
        self._fresh = threading.Event()
        self._stop = threading.Event()
        self.connected: bool | None = None  # None until the first answer

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="banner")
        yield Static("", id="empty")
        with Vertical(id="main"):
            yield Static("Connecting...", id="machine")
            yield Static("", id="memory")
            yield Static("", id="legend")
            with Horizontal(id="middle"):
                with Vertical(id="loaded-box"):
                    yield Static("Loaded models", classes="title")
                    yield DataTable(id="loaded", cursor_type="row", zebra_stripes=True)
                with Vertical(id="throughput-box"):
                    yield Static("Throughput (all models)", classes="title")
                    yield Sparkline([0.0], id="sparkline")
                    yield Static("", id="throughput")
            with Horizontal(id="bottom"):
                with Vertical(id="local-box"):
                    yield Static("Local models", classes="title")
                    yield DataTable(id="local", cursor_type="row", zebra_stripes=True)
                with Vertical(id="log-box"):
                    yield Static("Requests", classes="title")
                    yield DataTable(id="log", cursor_type="row", zebra_stripes=True)
        yield Static("", id="notice")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (
            ("loaded", LOADED_COLUMNS),
            ("log", LOG_COLUMNS),
            ("local", LOCAL_COLUMNS),
        ):
            table = self.query_one(f"#{table_id}", DataTable)
            for label, width in columns:
                table.add_column(label, width=width)
        self.set_interval(self.interval / 2, self._render_latest)
        self.poll()

    def on_unmount(self) -> None:
        self._stop.set()

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def poll(self) -> None:
        """Fetch the newest snapshot; a failure marks the server as gone and keeps retrying."""
        while not self._stop.is_set():
            try:
                self._latest = (self.client.status(), self.client.models())
                self._error = None
            except ImpetusError as exc:
                self._error = exc.message
            self._fresh.set()
            self._stop.wait(self.interval)

    def _render_latest(self) -> None:
        """Show the newest snapshot; when the server is gone, keep the last one under a banner."""
        if not self._fresh.is_set():
            return
        self._fresh.clear()
        if self._latest is not None:
            self.query_one("#empty").display = False
            self.query_one("#main").display = True
            self.show(*self._latest)
        if self._error is not None or self._latest is None:
            self._show_down(self._error or "no answer")
            return
        self.connected = True
        self.query_one("#banner").display = False

    def _show_down(self, error: str) -> None:
        self.connected = False
        if self._latest is None:  # never connected: an empty state instead of empty tables
            self.query_one("#main").display = False
            empty = self.query_one("#empty", Static)
            empty.display = True
            empty.update(
                f"[b]No server at {self.client.base_url}[/b]\n[dim]({error})[/dim]\n\n"
                "Press [b]s[/b] to start `impetus serve` in the background,\n"
                "or start one yourself: the dashboard connects as soon as it answers."
            )
            return
        banner = self.query_one("#banner", Static)
        banner.display = True
        banner.update(f"Lost the server at {self.client.base_url} ({error}). Retrying...")

    def show(self, status: ServerStatus, models: list[dict[str, Any]]) -> None:
        """Render one snapshot (also called directly by tests with fixed data)."""
        self.query_one("#machine", Static).update(widgets.machine_text(status))
        self.query_one("#memory", Static).update(widgets.memory_bar(status))
        self.query_one("#legend", Static).update(widgets.legend(status))
        self.query_one("#sparkline", Sparkline).data = widgets.total_series(status)
        self.query_one("#throughput", Static).update(widgets.throughput_text(status))
        self._fill("loaded", widgets.loaded_rows(status))
        self._fill("log", widgets.request_rows(status))
        self._fill("local", widgets.local_rows(models))

    def _fill(self, table_id: str, rows: list[tuple[str, ...]]) -> None:
        """Replace a table's rows, keeping the cursor on the same row when it still exists."""
        table = self.query_one(f"#{table_id}", DataTable)
        if [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)] == rows:
            return
        cursor = table.cursor_row
        table.clear()
        for row in rows:
            table.add_row(*row, key=row[0] if table_id != "log" else None)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    def _selected(self, table_id: str) -> str | None:
        table = self.query_one(f"#{table_id}", DataTable)
        if not table.row_count:
            return None
        return str(table.get_row_at(table.cursor_row)[0])

    def _target(self) -> str | None:
        """The model under the cursor of the focused table (local models by default)."""
        focused = self.focused
        if isinstance(focused, DataTable) and focused.id in ("loaded", "local"):
            return self._selected(focused.id)
        return self._selected("local")

    def notify_user(self, message: str, error: bool = False) -> None:
        self.query_one("#notice", Static).update(f"[red]{message}[/]" if error else message)

    def action_refresh(self) -> None:
        self.poll()

    def action_load(self) -> None:
        if (name := self._target()) is not None:
            self._server_action("load", name)

    def action_unload(self) -> None:
        if (name := self._target()) is not None:
            self._server_action("unload", name)

    @work(thread=True, exit_on_error=False)
    def _server_action(self, verb: str, name: str) -> None:
        self.call_from_thread(self.notify_user, f"{verb}ing {name}...")
        try:
            getattr(self.client, verb)(name)
        except ImpetusError as exc:
            self.call_from_thread(self.notify_user, f"{verb} {name}: {exc.message}", True)
            return
        self.call_from_thread(self.notify_user, f"{verb}ed {name}")

    def action_pull(self) -> None:
        if self.actions is None:
            self.notify_user("Pull is not available here.", True)
            return
        self.push_screen(PullScreen(), self._pull_chosen)

    def _pull_chosen(self, name: str | None) -> None:
        if name:
            self._pull(name)

    @work(thread=True, exclusive=True, group="pull", exit_on_error=False)
    def _pull(self, name: str) -> None:
        assert self.actions is not None

        def progress(done: int, total: int) -> None:
            pct = f"{100 * done / total:.0f}%" if total else f"{done / 1e6:.0f} MB"
            self.call_from_thread(self.notify_user, f"pulling {name}: {pct}")

        try:
            pulled = self.actions.pull(name, progress)
        except ImpetusError as exc:
            self.call_from_thread(self.notify_user, f"pull {name}: {exc.message}", True)
            return
        self.call_from_thread(self.notify_user, f"pulled {pulled}")

    def action_remove(self) -> None:
        name = self._selected("local")
        if self.actions is None or name is None:
            return
        self.push_screen(
            ConfirmScreen(f"Remove {name} from disk?"),
            lambda yes: self._remove_if(name, bool(yes)),
        )

    def _remove_if(self, name: str, confirmed: bool) -> None:
        if confirmed:
            self._remove(name)

    @work(thread=True, exit_on_error=False)
    def _remove(self, name: str) -> None:
        assert self.actions is not None
        try:
            self.actions.remove(name)
        except ImpetusError as exc:
            self.call_from_thread(self.notify_user, f"remove {name}: {exc.message}", True)
            return
        self.call_from_thread(self.notify_user, f"removed {name}")

    def action_start_server(self) -> None:
        if self.connected or self.actions is None:
            return
        self._start_server()

    @work(thread=True, exclusive=True, group="start", exit_on_error=False)
    def _start_server(self) -> None:
        assert self.actions is not None
        try:
            what = self.actions.start_server()
        except ImpetusError as exc:
            self.call_from_thread(self.notify_user, exc.message, True)
            return
        self.call_from_thread(self.notify_user, what)


def make_app(
    client: StatusSource, actions: LocalActions | None = None, *, interval: float = 0.5
) -> Dashboard:
    return Dashboard(client, actions, interval=interval)
