"""The live dashboard in Debian's Chromium, driven by Playwright, over the real API, broker and store.

Screenshots land in build/screenshots/ for a reviewer to look at.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from suanwang.api.access import new_token, token_entry_yaml
from suanwang.clock import HOUR_MS, now_ms
from suanwang.devstack.broker import EmbeddedBroker
from suanwang.schemas.topics import ALERT, PLACEMENT, ROLLUP
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.topology import load_network
from tests.conftest import CHROMIUM
from tests.samples import sample_record
from tests.served import Live, serving

SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
# Chromium as root on a closed network: no sandbox, no GPU, no calls home.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
FLAGS += ["--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000  # generous for a shared machine; the lag the page measured is printed, not asserted


def placement(task_id: str, cluster: str, origin_hub: str = "yangtze") -> dict[str, Any]:
    network = load_network()
    hub = next(h for h, spec in network.hubs.items() if cluster in spec.clusters)
    province = network.hubs[hub].clusters[cluster].province
    return sample_record("Placement") | {
        "event_id": f"e-{task_id}",
        "event_time": now_ms(),
        "task_id": task_id,
        "origin_hub": origin_hub,
        "hub": hub,
        "cluster": cluster,
        "province": province,
        "node_id": f"{cluster}-gpu-a800-00001",
        "saved_yuan": 12.5,
        "saved_carbon_kg": 3.0,
        "total_cost": 40.0,
        "decision_us": 42,
    }


def hub_window(hub: str, end_ms: int, cpu: float) -> dict[str, Any]:
    return sample_record("Rollup") | {
        "event_id": f"r-{hub}-{end_ms}",
        "event_time": end_ms,
        "scope_kind": "hub",
        "scope_key": hub,
        "window_s": 60,
        "window_start": end_ms - 60_000,
        "window_end": end_ms,
        "cpu_util_mean": cpu,
        "accelerator_util_mean": cpu / 2,
        "nodes_online": 100,
        "nodes_total": 100,
        "power_kw_mean": 250.0,
        "pue": 1.2,
        "green_share": 0.8,
    }


def market_price(hub: str, compute_class: str, index: float, at: int) -> dict[str, Any]:
    return sample_record("MarketPrice") | {
        "event_time": at + 1_000_000,  # the newest price of its hub and class in the shared store
        "price_key": f"{hub}/{compute_class}",
        "hub": hub,
        "compute_class": compute_class,
        "price_index": index,
        "yuan_per_cu_hour": 0.55 * index,
        "utilisation": 0.92,
        "pressure": 0.1,
    }


def seeded_cpu(window: int, hub: int) -> float:
    """CPU use of the history's windows: rising over time, a little apart per hub so the lines show."""
    return 0.3 + 0.04 * window + 0.01 * hub


@pytest.fixture(scope="module")
def deployment(broker: EmbeddedBroker, store: Store, store_dir: Path) -> Settings:
    """Topics of this module's own, and an hour's history of every hub and a few placements in the store."""
    now = now_ms()
    hubs = list(load_network().hubs)
    windows = [
        hub_window(h, now - HOUR_MS // 6 + i * 10_000, seeded_cpu(i, j)) for j, h in enumerate(hubs) for i in range(12)
    ]
    store.insert_records("rollups", windows)
    store.insert_records("placements", [placement(f"hist-{i}", "qingyang") for i in range(5)])
    prices = [market_price("gansu", "GPU", 1.25, now), market_price("gba", "NPU", 1.0, now)]
    store.insert_records("market_prices", prices)
    return Settings(
        kafka_bootstrap=broker.bootstrap, topic_prefix=f"web{os.getpid()}.", data_dir=store_dir, session_timeout_ms=6000
    )


@pytest.fixture(scope="module")
def live(store: Store, deployment: Settings) -> Iterator[Live]:
    """An open API (no tokens), as `suanwang up` serves on loopback."""
    with serving(store, deployment) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A fresh page and every console error or uncaught exception it logs."""
    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    opened = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"console: {message.text}")

    opened.on("console", on_console)
    opened.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    opened.on(  # the page closing a stream to open another one's is not a failure
        "requestfailed",
        lambda req: errors.append(f"{req.failure}: {req.url}") if req.failure != "net::ERR_ABORTED" else None,
    )
    opened.on("response", lambda resp: errors.append(f"{resp.status}: {resp.url}") if resp.status >= 400 else None)
    yield opened, errors
    context.close()


def open_dashboard(page: Page, live: Live, query: str = "") -> None:
    """Loads the page and waits until the map is drawn and the live stream is reading."""
    page.goto(f"{live.url}/{query}")
    page.wait_for_selector("body[data-live='on']", timeout=WAIT_MS)
    page.wait_for_selector("#map .geo path.land, #map .geo .land path, #map path.land", timeout=WAIT_MS)


def test_the_page_loads_clean_and_shows_every_hub_on_the_map_and_in_the_table(
    page: tuple[Page, list[str]], live: Live
) -> None:
    tab, errors = page
    open_dashboard(tab, live)
    network = load_network()
    rows = tab.locator("#hubs tbody tr")
    assert rows.count() == len(network.hubs) == 8
    map_text = tab.locator("#map").inner_text()
    for hub in network.hubs.values():
        assert hub.name.zh in map_text
        assert tab.locator("#hubs tbody").get_by_text(hub.name.zh, exact=True).count() == 1
    newest_gansu = seeded_cpu(11, list(network.hubs).index("gansu"))
    assert tab.locator("#hubs tr[data-hub='gansu'] td.cpu").inner_text() == f"{round(newest_gansu * 100)}%"
    assert int(tab.locator("#kpi-placed").inner_text().replace(",", "")) >= 5
    assert tab.locator("#chart-cpu .scatterlayer .trace").count() == 8
    gansu_gpu = tab.locator("#prices tr[data-price='gansu/GPU']")
    assert "×1.25" in gansu_gpu.inner_text() and "92%" in gansu_gpu.inner_text()
    assert gansu_gpu.get_attribute("class") == "dear"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=SCREENSHOTS / "dashboard-national.png", full_page=True)
    assert errors == [], errors


def test_placements_alerts_and_rollups_arrive_live(page: tuple[Page, list[str]], live: Live) -> None:
    tab, errors = page
    open_dashboard(tab, live)
    placed_before = int(tab.locator("#kpi-placed").inner_text().replace(",", ""))
    task = f"{live.tag}-live-1"
    live.send(PLACEMENT, placement(task, "zhongwei", origin_hub="gba"))
    tab.wait_for_selector(f"#placements tr[data-task='{task}']", timeout=WAIT_MS)
    assert int(tab.locator("#kpi-placed").inner_text().replace(",", "")) == placed_before + 1
    zhongwei = load_network().hubs["ningxia"].clusters["zhongwei"].name.zh
    assert zhongwei in tab.locator(f"#placements tr[data-task='{task}']").inner_text()
    live.send(
        ALERT,
        sample_record("Alert")
        | {"event_time": now_ms() + 60_000, "kind": "overload", "severity": "WARNING", "scope_key": "gansu",
           "resolved": False},
    )  # fmt: skip
    tab.wait_for_selector("#alerts li[data-kind='overload']", timeout=WAIT_MS)
    # stamped a minute ahead (the simulator's compressed clock): the lag is still measured on one clock
    assert 0 <= int(tab.locator("body").get_attribute("data-lag-ms")) < WAIT_MS
    live.send(ROLLUP, hub_window("ningxia", now_ms() + 60_000, 0.97))
    tab.wait_for_function(
        "document.querySelector(\"#hubs tr[data-hub='ningxia'] td.cpu\").textContent === '97%'", timeout=WAIT_MS
    )
    print(f"dashboard: last event shown {tab.locator('body').get_attribute('data-lag-ms')} ms after it reached Kafka")
    assert errors == [], errors


def test_the_scope_selector_filters_to_one_province(page: tuple[Page, list[str]], live: Live) -> None:
    tab, errors = page
    open_dashboard(tab, live)
    tab.select_option("#scope", "province:Gansu")
    tab.wait_for_selector("body[data-scope='province:Gansu'][data-live='on']", timeout=WAIT_MS)
    assert [r.get_attribute("data-hub") for r in tab.locator("#hubs tbody tr").all()] == ["gansu"]
    assert {r.get_attribute("data-price").split("/")[0] for r in tab.locator("#prices tbody tr").all()} == {"gansu"}
    outside, inside = f"{live.tag}-guangdong", f"{live.tag}-gansu"
    live.send(PLACEMENT, placement(outside, "shaoguan"))
    live.send(PLACEMENT, placement(inside, "qingyang"))
    tab.wait_for_selector(f"#placements tr[data-task='{inside}']", timeout=WAIT_MS)
    tab.wait_for_timeout(1000)  # the Guangdong placement, were it let through, would be shown by now
    assert tab.locator(f"#placements tr[data-task='{outside}']").count() == 0
    assert {r.get_attribute("data-cluster") for r in tab.locator("#placements tbody tr").all()} == {"qingyang"}
    tab.screenshot(path=SCREENSHOTS / "dashboard-gansu.png", full_page=True)
    assert errors == [], errors


def test_labels_switch_between_chinese_and_english(page: tuple[Page, list[str]], live: Live) -> None:
    tab, errors = page
    open_dashboard(tab, live)
    assert tab.locator("h1").inner_text().startswith("算网")
    tab.click("#lang")
    assert tab.locator("h1").inner_text().startswith("suanwang")
    assert tab.locator("#hubs tbody").get_by_text("Gansu", exact=True).count() == 1
    assert "Yangtze River Delta" in tab.locator("#map").inner_text()
    assert errors == [], errors


def test_with_tokens_the_page_asks_for_one_and_keeps_to_its_scope(
    page: tuple[Page, list[str]], store: Store, deployment: Settings
) -> None:
    """A provincial operator signs in with their token and sees Gansu only; a wrong token is told so."""
    tab, errors = page
    token = new_token()
    entry = token_entry_yaml("gansu-desk", "provincial_operator", token, load_network(), provinces=["Gansu"])
    secured = Settings(**(deployment.model_dump() | {"api_tokens": "tokens:\n" + textwrap.indent(entry, "  ")}))
    with serving(store, secured) as live:
        tab.goto(live.url)
        tab.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
        tab.fill("#token", "sw_not-a-real-token")
        tab.click("#login button")
        tab.wait_for_function("document.querySelector('#login-error').textContent === 'unknown token'", timeout=WAIT_MS)
        tab.fill("#token", token)
        tab.click("#login button")
        tab.wait_for_selector("body[data-live='on'][data-scope='province:Gansu']", timeout=WAIT_MS)
        assert tab.locator("#login").is_hidden()
        assert [o.get_attribute("value") for o in tab.locator("#scope option").all()] == ["province:Gansu"]
        assert [r.get_attribute("data-hub") for r in tab.locator("#hubs tbody tr").all()] == ["gansu"]
        assert "gansu-desk" in tab.locator("#you").inner_text()
        inside = f"{live.tag}-signed-in"
        live.send(PLACEMENT, placement(inside, "qingyang"))
        tab.wait_for_selector(f"#placements tr[data-task='{inside}']", timeout=WAIT_MS)
    unauthorised = [e for e in errors if "401" in e]
    assert unauthorised and not [e for e in errors if "401" not in e], errors
