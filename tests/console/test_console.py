"""The web console in a real browser, against a real `loglane run` of the shop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from loglane.api.commands import keyed_request_id
from tests.console.conftest import TOKEN, Server, wait

Screenshot = Callable[[str], Path]


def text_of(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def keys_shown(driver: WebDriver) -> list[str]:
    """The keys in the view browser's table, top to bottom (each row's first cell)."""
    cells = driver.find_elements(By.CSS_SELECTOR, "#rows tbody tr td:first-child")
    return [cell.text for cell in cells]


def test_a_console_page_asks_for_a_token_and_takes_only_a_valid_one(
    browser: WebDriver, server: Server, screenshot: Screenshot
) -> None:
    browser.delete_all_cookies()
    browser.get(f"{server.url}/ui/services/orders")
    wait(browser).until(lambda driver: "/ui/login" in driver.current_url)
    screenshot("login")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login").click()
    wait(browser).until(
        lambda driver: "not one of this server's tokens" in text_of(driver, "#login-error")
    )
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait(browser).until(lambda driver: driver.current_url == f"{server.url}/ui/services/orders")
    assert browser.find_element(By.TAG_NAME, "h1").text == "orders"


def test_the_landscape_graph_shows_the_shops_two_services_and_who_follows_whom(
    console: WebDriver, server: Server, screenshot: Screenshot
) -> None:
    console.get(f"{server.url}/ui")
    graph = console.find_element(By.ID, "landscape")
    services = {
        box.get_attribute("data-service")
        for box in graph.find_elements(By.CSS_SELECTOR, "g.service")
    }
    assert services == {"customers", "orders"}
    edge = graph.find_element(By.CSS_SELECTOR, 'g.edge[data-edge="customers->orders"]')
    assert edge.text == "CustomerCreated"
    assert "customers.in" in graph.text
    assert "orders.out" in graph.text
    screenshot("landscape")


def test_every_page_of_a_service_loads(console: WebDriver, server: Server) -> None:
    pages = {
        "/ui/services/customers": "customers",
        "/ui/services/customers/dlq": "customers · dead letters",
        "/ui/services/orders/views": "orders · views",
        "/ui/services/orders/views/orders": "orders · views · orders",
        "/ui/commands": "Commands",
        "/ui/commands/orders/PlaceOrder": "Commands · orders · PlaceOrder",
        "/ui/requests": "Request",
    }
    for path, heading in pages.items():
        console.get(server.url + path)
        assert console.find_element(By.TAG_NAME, "h1").text == heading, path
    console.get(f"{server.url}/ui/services/nowhere")
    assert "serves no service 'nowhere'" in text_of(console, "#problem")


def test_the_service_page_shows_each_partition_and_its_throughput(
    console: WebDriver, server: Server, screenshot: Screenshot
) -> None:
    with server.api() as api:
        for number in range(20):
            body = {"customer_id": f"busy-{number}", "name": "Busy"}
            assert api.post("/customers/commands/CreateCustomer", json=body).status_code == 202
    console.get(f"{server.url}/ui/services/customers")
    rows = console.find_elements(By.CSS_SELECTOR, "#partition-table tbody tr")
    assert [row.get_attribute("data-partition") for row in rows] == [
        f"customers.in[{partition}]" for partition in range(4)
    ]
    # the table refreshes itself: a rate appears from the second sample on, without a reload
    wait(console).until(lambda driver: text_of(driver, "#total-rate") not in ("", "—"))
    wait(console).until(lambda driver: text_of(driver, "#total-lag") == "0")
    screenshot("service")


def test_a_command_posted_from_the_form_shows_its_outcome(
    console: WebDriver, server: Server, screenshot: Screenshot
) -> None:
    console.get(f"{server.url}/ui/commands/customers/CreateCustomer")
    console.find_element(By.ID, "field-customer_id").send_keys("grace")
    console.find_element(By.ID, "field-name").send_keys("Grace Hopper")
    console.find_element(By.ID, "post").click()
    wait(console).until(lambda driver: "done" in text_of(driver, "#outcome-status"))
    assert "CustomerCreated" in text_of(console, "#outcome-events")
    assert "Grace Hopper" in text_of(console, "#outcome-events")
    screenshot("command")

    console.find_element(By.ID, "post").click()  # the same customer again
    wait(console).until(lambda driver: "rejected" in text_of(driver, "#outcome-status"))
    assert "customer grace exists" in text_of(console, "#outcome-detail")

    console.get(f"{server.url}/ui/commands/orders/PlaceOrder")
    console.find_element(By.ID, "field-order_id").send_keys("o-1")
    console.find_element(By.ID, "field-customer_id").send_keys("grace")
    console.find_element(By.ID, "field-amount_cents").send_keys("0")
    console.find_element(By.ID, "post").click()
    wait(console).until(lambda driver: "HTTP 422" in text_of(driver, "#outcome-status"))
    assert "greater than 0" in text_of(console, "#outcome-detail")


def test_a_request_id_shows_its_path_across_customers_and_orders_as_it_happens(
    console: WebDriver, server: Server, screenshot: Screenshot
) -> None:
    # the request id of a keyed POST is known before it is posted: open its page first
    key = "path-of-ada"
    request_id = keyed_request_id("customers", key)
    console.get(f"{server.url}/ui/requests")
    console.find_element(By.ID, "request-id").send_keys(request_id)
    console.find_element(By.ID, "trace").click()
    wait(console).until(lambda driver: text_of(driver, "#unknown") != "")

    with server.api() as api:
        body = {"customer_id": "ada", "name": "Ada Lovelace"}
        posted = api.post(
            "/customers/commands/CreateCustomer", json=body, headers={"Idempotency-Key": key}
        )
        assert posted.json()["request_id"] == request_id

    # the page polls: the path appears and completes without a reload
    wait(console).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, '[data-done="true"]'))
    outcomes = {
        element.get_attribute("data-service"): element.get_attribute("data-outcome")
        for element in console.find_elements(By.CSS_SELECTOR, ".outcome-of")
    }
    assert outcomes == {"customers": "done", "orders": "applied"}
    steps = console.find_element(By.ID, "steps").text
    assert "CreateCustomer appended to customers.in" in steps
    assert "CustomerCreated published on customers.out" in steps
    assert "orders applied CustomerCreated" in steps
    screenshot("request")


def test_a_dead_letter_is_re_driven_from_the_page_once_its_cause_is_fixed(
    console: WebDriver, server: Server, screenshot: Screenshot
) -> None:
    server.broken.touch()
    try:
        with server.api() as api:
            body = {"customer_id": "lin", "name": "Lin"}
            failed = api.post("/customers/commands/ImportCustomer?wait=30", json=body).json()
        assert failed["status"] == "failed"
        request_id = failed["request_id"]

        console.get(f"{server.url}/ui/services/customers/dlq")
        row = console.find_element(
            By.XPATH, f'//table[@id="letters"]//tr[.//a[text()="{request_id}"]]'
        )
        assert "the old system is down" in row.text
        screenshot("dead-letters")
        row.find_element(By.CSS_SELECTOR, "td a").click()
        wait(console).until(lambda driver: text_of(driver, "#traceback") != "")
        assert "in import_customer" in text_of(console, "#traceback")
        assert "ImportCustomer" in text_of(console, "#headers")
        assert '"customer_id": "lin"' in text_of(console, "#payload")
        screenshot("dead-letter")
    finally:
        server.broken.unlink()

    console.find_element(By.ID, "redrive").click()
    wait(console).until(lambda driver: text_of(driver, "#done") == "re-driven")
    assert text_of(console, "#letter-status") == "redriven"

    console.get(f"{server.url}/ui/requests?id={quote(request_id)}")
    wait(console).until(
        lambda driver: (
            driver.find_elements(By.CSS_SELECTOR, '[data-done="true"]')
            and "done" in text_of(driver, '.outcome-of[data-service="customers"]')
        )
    )
    assert "re-driven to customers.in" in text_of(console, "#steps")
    console.get(f"{server.url}/ui/services/customers/views/customers?key=lin")
    assert '"name": "Lin"' in text_of(console, "#row")
    console.get(f"{server.url}/ui/services/customers/dlq")
    assert not console.find_elements(By.XPATH, f'//a[text()="{request_id}"]')


def test_the_view_browser_pages_through_rows_and_looks_up_a_key(
    console: WebDriver, server: Server, screenshot: Screenshot
) -> None:
    with server.api() as api:
        for number in range(30):
            body = {"customer_id": f"page-{number:02d}", "name": f"Paged {number}"}
            posted = api.post("/customers/commands/CreateCustomer?wait=30", json=body)
            assert posted.status_code == 200
    console.get(f"{server.url}/ui/services/customers/views/customers?name=Paged 3")
    assert text_of(console, "#rows").count("page-") == 1
    console.get(f"{server.url}/ui/services/customers/views/customers")
    first = keys_shown(console)
    assert len(first) == 25
    assert first == sorted(first)
    screenshot("view")
    console.find_element(By.ID, "next-page").click()
    wait(console).until(lambda driver: "after=" in driver.current_url)
    second = keys_shown(console)
    assert second
    assert second == sorted(second)
    assert second[0] > first[-1]
    console.find_element(By.ID, "key").send_keys("page-07")
    console.find_element(By.CSS_SELECTOR, "#lookup button").click()
    wait(console).until(lambda driver: text_of(driver, "#row") != "")
    assert '"name": "Paged 7"' in text_of(console, "#row")


def test_a_dead_letter_dropped_from_the_page_leaves_the_pending_list(
    console: WebDriver, server: Server
) -> None:
    server.broken.touch()
    try:
        with server.api() as api:
            body = {"customer_id": "mallory", "name": "Mallory"}
            failed = api.post("/customers/commands/ImportCustomer?wait=30", json=body).json()
    finally:
        server.broken.unlink()
    request_id = failed["request_id"]
    console.get(f"{server.url}/ui/services/customers/dlq?key=mallory")
    console.find_element(By.XPATH, f'//tr[.//a[text()="{request_id}"]]//td/a').click()
    wait(console).until(lambda driver: driver.find_elements(By.ID, "drop"))
    console.find_element(By.ID, "drop").click()
    wait(console).until(lambda driver: text_of(driver, "#done") == "dropped")
    assert text_of(console, "#letter-status") == "dropped"
    assert not console.find_elements(By.ID, "redrive")

    console.get(f"{server.url}/ui/services/customers/dlq?key=mallory")
    assert text_of(console, "#no-letters") == "No pending dead letters match."
    console.get(f"{server.url}/ui/services/customers/dlq?key=mallory&handled=1")
    assert "dropped" in text_of(console, "#letters")


def test_a_rejected_request_shows_the_reason_and_no_follower_on_its_path(
    console: WebDriver, server: Server
) -> None:
    with server.api() as api:
        body = {"customer_id": "twice", "name": "Twice"}
        assert api.post("/customers/commands/CreateCustomer?wait=30", json=body).status_code == 200
        again = api.post("/customers/commands/CreateCustomer?wait=30", json=body).json()
    assert again["status"] == "rejected"
    console.get(f"{server.url}/ui/requests?id={quote(again['request_id'])}")
    wait(console).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, '[data-done="true"]'))
    outcomes = {
        element.get_attribute("data-service"): element.get_attribute("data-outcome")
        for element in console.find_elements(By.CSS_SELECTOR, ".outcome-of")
    }
    assert outcomes == {"customers": "rejected"}
    steps = text_of(console, "#steps")
    assert "customer twice exists" in steps
    assert "loglane.Rejected published on customers.out" in steps
