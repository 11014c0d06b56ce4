// The Loglane console's few scripts: live fragments, the live request path, the command form.
"use strict";

// An element with data-refresh="URL" data-every="MS" replaces its content with URL's HTML
// every MS milliseconds; with data-until-done, it stops once the new content holds an element
// with data-done="true", or after a quarter of an hour (a request nobody knows, left open).
const GIVE_UP_AFTER_MS = 15 * 60 * 1000;

function refreshing(element) {
  const every = Number(element.dataset.every || 2000);
  const until = Date.now() + GIVE_UP_AFTER_MS;
  const tick = async () => {
    if ("untilDone" in element.dataset && Date.now() > until) {
      return;
    }
    try {
      const response = await fetch(element.dataset.refresh, { headers: { Accept: "text/html" } });
      if (response.ok) {
        element.innerHTML = await response.text();
      }
    } catch (error) {
      // the server may restart; the next tick tries again
    }
    if ("untilDone" in element.dataset && element.querySelector('[data-done="true"]')) {
      return;
    }
    window.setTimeout(tick, every);
  };
  if ("untilDone" in element.dataset && element.querySelector('[data-done="true"]')) {
    return;
  }
  window.setTimeout(tick, every);
}

// A command form: its fields, typed by the command's JSON schema, become the JSON body of a
// POST to the API's command route with ?wait=; the outcome is shown below the form.
function valueOf(input) {
  const kind = input.dataset.kind;
  if (kind === "boolean") {
    return input.checked;
  }
  const text = input.value;
  if (text === "" && !input.required) {
    return undefined;
  }
  if (kind === "integer" || kind === "number") {
    return text === "" ? text : Number(text);
  }
  if (kind === "json") {
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new Error(`${input.name}: not JSON (${error.message})`);
    }
  }
  return text;
}

function commandForm(form) {
  const outcome = document.getElementById("outcome");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    try {
      for (const input of form.querySelectorAll("[data-field]")) {
        const value = valueOf(input);
        if (value !== undefined) {
          body[input.name] = value;
        }
      }
    } catch (error) {
      outcome.innerHTML = "";
      const problem = document.createElement("p");
      problem.className = "error";
      problem.textContent = error.message;
      outcome.appendChild(problem);
      return;
    }
    const wait = form.querySelector("[name=wait]").value || "0";
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    const key = form.querySelector("[name=idempotency_key]").value.trim();
    if (key) {
      headers["Idempotency-Key"] = key;
    }
    outcome.innerHTML = '<p class="hint" id="posting">posted; waiting for the outcome…</p>';
    const response = await fetch(`${form.dataset.endpoint}?wait=${encodeURIComponent(wait)}`, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({ detail: "the answer was not JSON" }));
    const shown = await fetch(form.dataset.outcome, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/html" },
      body: JSON.stringify({ status_code: response.status, answer }),
    });
    outcome.innerHTML = await shown.text();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshing);
  document.querySelectorAll("form[data-endpoint]").forEach(commandForm);
});
