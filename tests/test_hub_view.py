"""The live panel's view of the hubs: load, power, the current hour's grid figures and demand."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from suanwang.devstack.runtime import HubView

HOUR = 3_600_000


def _render(view: HubView) -> str:
    console = Console(width=120, record=True)
    console.print(view.table())
    return console.export_text()


def test_hub_view_shows_the_hours_price_and_ignores_other_hours() -> None:
    now = 1_795_000_000_000
    hour = now - now % HOUR
    view = HubView()
    for node, util in (("a", 0.5), ("b", 0.9)):
        view.telemetry(dict(hub="gansu", node_id=node, cpu_util=util, accelerator_util=0.0, power_kw=2.5))
    view.demand["yangtze"] += 3

    def signal(start: int, price: float) -> dict:
        return dict(
            hub="gansu",
            province="Gansu",
            hour_start=datetime.fromtimestamp(start / 1000, UTC),
            price_yuan_kwh=price,
            green_share=0.8,
        )

    view.grid_signal(signal(hour, 0.321), now)
    view.grid_signal(signal(hour + HOUR, 9.99), now)  # tomorrow's forecast is not today's price
    text = _render(view)
    gansu = next(line for line in text.splitlines() if "gansu" in line)
    assert "0.321" in gansu and "9.99" not in text and "80%" in gansu and "5" in gansu
    assert 0.5 < view.load["gansu"] < 0.9
    yangtze = next(line for line in text.splitlines() if "yangtze" in line)
    assert yangtze.split()[-2] == "3"
