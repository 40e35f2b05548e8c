// mt5lifecycle console: confirmation dialogs, in-place filtering and live updates.
// The pages work without it; this file only makes them quicker to use. Everything it
// writes into the page goes through textContent: no markup is ever built from data.
"use strict";

(function () {
  const body = document.body;
  const root = body.dataset.root || "";
  const pollMs = Math.max(Number(body.dataset.poll) || 5000, 200);
  const liveUrl = body.dataset.liveUrl;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, value);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function when(iso) {
    return iso ? String(iso).replace("T", " ").slice(0, 19) : "-";
  }

  function nextText(r) {
    return r.due ? r.due.toLowerCase().replace(/_/g, " ") + " at " + when(r.next_due) : "-";
  }

  function instanceUrl(id) {
    return root + "/instances/" + encodeURIComponent(id) + (id === "new" ? "/overview" : "");
  }

  // The console's filters (console.py: _age, _pct, _verdict), for live updates.
  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 120) return Math.floor(seconds) + " s ago";
    if (seconds < 7200) return Math.floor(seconds / 60) + " min ago";
    return Math.floor(seconds / 3600) + " h ago";
  }

  function pct(fraction) {
    return fraction === null || fraction === undefined ? "-" : (fraction * 100).toFixed(1) + "%";
  }

  function verdict(value) {
    return value === null || value === undefined ? "unknown" : (value ? "yes" : "no");
  }

  function badge(status) {
    return el("span", { class: "badge s-" + status, "data-badge": "" }, status);
  }

  // --- dialogs and confirmations ---------------------------------------------------

  document.querySelectorAll("[data-js-hide]").forEach((node) => { node.hidden = true; });

  document.addEventListener("click", (event) => {
    const opener = event.target.closest("[data-dialog]");
    if (opener) {
      const dialog = document.getElementById(opener.dataset.dialog);
      if (dialog && typeof dialog.showModal === "function") {
        event.preventDefault();
        dialog.showModal();
        const first = dialog.querySelector("input:not([type=hidden]), button");
        if (first) first.focus();
      }
      return;
    }
    const closer = event.target.closest("dialog [data-close]");
    if (closer) {
      event.preventDefault();
      closer.closest("dialog").close();
    }
  });

  function guard(input) {
    const form = input.form;
    const button = form && form.querySelector("[data-needs-match]");
    if (button) button.disabled = input.value !== input.dataset.expect;
  }
  document.querySelectorAll("input[data-expect]").forEach((input) => {
    guard(input);
    input.addEventListener("input", () => guard(input));
  });

  // --- the fleet page ----------------------------------------------------------------

  const filters = document.querySelector("[data-filters]");

  function row(r) {
    const tr = el("tr");
    const idCell = el("td", { class: "id", "data-label": "Instance" });
    idCell.append(el("a", { href: instanceUrl(r.id) }, r.id));
    const state = el("td", { "data-label": "State" });
    state.append(badge(r.status));
    const blank = (value) => (value ? null : "");
    tr.append(
      idCell,
      state,
      el("td", { class: "reason", "data-label": "Reason", "data-blank": blank(r.last_failure_reason) },
        r.last_failure_reason || "-"),
      el("td", { class: "num", "data-label": "Attempts" }, String(r.login_attempt_count)),
      el("td", { class: "num", "data-label": "Restarts" }, String(r.restart_count)),
      el("td", { class: "time", "data-label": "Last login", "data-blank": blank(r.last_login_attempt) },
        when(r.last_login_attempt)),
      el("td", { class: "time", "data-label": "Next", "data-blank": blank(r.due) }, nextText(r)),
    );
    return tr;
  }

  function attentionItem(r) {
    const li = el("li");
    let href = root + "/instances/" + encodeURIComponent(r.id);
    if (r.status === "ACCOUNT_CLOSED") href += "/closed";
    else if (r.id === "new") href += "/overview";
    li.append(
      el("a", { class: "id", href: href }, r.id),
      badge(r.status),
      el("span", { class: "reason" }, r.last_failure_reason || ""),
      el("span", { class: "hint" }, r.hint || ""),
    );
    return li;
  }

  function pageLink(params, page, label) {
    const next = new URLSearchParams(params);
    next.set("page", String(page));
    return el("a", { href: root + "/?" + next.toString(), "data-page-link": String(page) }, label);
  }

  function setText(selector, text) {
    const node = document.querySelector(selector);
    if (node) node.textContent = text;
  }

  // --- set-aside notifications (both pages) -----------------------------------------

  function setAsideRow(n, withInstance, canAct) {
    const tr = el("tr");
    if (withInstance) {
      const cell = el("td", { class: "id", "data-label": "Instance" });
      cell.append(el("a", { href: instanceUrl(n.instance_id) }, n.instance_id));
      tr.append(cell);
    }
    tr.append(
      el("td", { "data-label": "Kind" }, n.kind),
      el("td", { class: "time", "data-label": "Raised" }, when(n.at)),
      el("td", { class: "time", "data-label": "Set aside" }, when(n.set_aside_at)),
      el("td", { class: "text", "data-label": "Message" }, n.message),
      el("td", { class: "text", "data-label": "Error" }, n.error),
    );
    if (withInstance && canAct) {
      const cell = el("td", { "data-label": "" });
      if (n.live) {
        const href = root + "/instances/" + encodeURIComponent(n.instance_id) + "/redeliver?" +
          new URLSearchParams({ nid: n.notification_id }).toString();
        cell.append(el("a", { class: "button", href: href }, "Redeliver"));
      }
      tr.append(cell);
    }
    return tr;
  }

  function renderSetAside(sa) {
    const section = document.querySelector("[data-set-aside-section]");
    const table = section && section.querySelector("table[data-set-aside]");
    if (!sa || !sa.rows || !table) return;
    const withInstance = table.dataset.withInstance === "1";
    const canAct = table.dataset.canAct === "1";
    table.querySelector("tbody").replaceChildren(
      ...sa.rows.map((n) => setAsideRow(n, withInstance, canAct)));
    setText("[data-set-aside-total]", String(sa.total));
    const wrap = section.querySelector("[data-table-wrap]");
    if (wrap) wrap.hidden = sa.rows.length === 0;
    const empty = section.querySelector("[data-empty]");
    if (empty) empty.hidden = sa.rows.length > 0;
    const button = section.querySelector("[data-redeliver]");
    if (button) button.hidden = sa.rows.length === 0;
  }

  function renderFleet(view) {
    const set = setText;
    set("[data-total]", String(view.total));
    if (view.health) {
      set("[data-healthy]", String(view.health.healthy));
      set("[data-health-instances]", String(view.health.instances));
    }
    renderSetAside(view.set_aside);
    for (const [state, n] of Object.entries(view.counts)) {
      set('[data-count="' + state + '"]', String(n));
    }
    document.querySelectorAll("[data-filter-status]").forEach((node) => {
      node.classList.toggle("selected", node.dataset.filterStatus === view.query.status);
    });
    set("[data-attention-total]", String(view.attention_total));
    const list = document.querySelector("[data-attention]");
    if (list) list.replaceChildren(...view.attention.map(attentionItem));
    const empty = document.querySelector("[data-attention-empty]");
    if (empty) empty.hidden = view.attention.length > 0;
    const more = document.querySelector("[data-attention-more]");
    if (more) more.hidden = view.attention_total <= view.attention.length;
    const rows = document.querySelector("[data-rows]");
    if (rows) rows.replaceChildren(...view.rows.map(row));
    const none = document.querySelector("[data-rows-empty]");
    if (none) none.hidden = view.rows.length > 0;
    document.querySelectorAll("[data-sort]").forEach((link) => {
      const key = link.dataset.sort;
      const active = view.query.sort === key;
      const params = new URLSearchParams({ q: view.query.q, status: view.query.status, sort: key,
        dir: active && view.query.dir === "asc" ? "desc" : "asc" });
      link.setAttribute("href", root + "/?" + params.toString());
      const arrow = link.querySelector(".arrow");
      if (arrow) arrow.textContent = active ? (view.query.dir === "asc" ? "▲" : "▼") : "";
      const th = link.closest("th");
      if (active) th.setAttribute("aria-sort", view.query.dir === "asc" ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    const pager = document.querySelector("[data-pager]");
    if (pager) {
      const params = { q: view.query.q, status: view.query.status, sort: view.query.sort, dir: view.query.dir };
      const parts = [el("span", {}, view.matched + " shown · page " + view.page + " of " + view.pages)];
      if (view.page > 1) parts.push(pageLink(params, view.page - 1, "Previous"));
      if (view.page < view.pages) parts.push(pageLink(params, view.page + 1, "Next"));
      pager.replaceChildren(...parts);
    }
    if (filters) {
      const select = filters.querySelector("select[name=status]");
      if (select && select.value !== view.query.status) select.value = view.query.status;
    }
  }

  function goTo(params) {
    for (const [key, value] of [...params.entries()]) {
      if (value === "") params.delete(key);
    }
    const query = params.toString();
    history.replaceState(null, "", root + "/" + (query ? "?" + query : ""));
    refresh();
  }

  if (filters) {
    let timer = null;
    const fromForm = () => {
      const params = new URLSearchParams(new FormData(filters));
      params.delete("page");
      goTo(params);
    };
    filters.addEventListener("submit", (event) => { event.preventDefault(); fromForm(); });
    filters.addEventListener("change", fromForm);
    filters.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(fromForm, 200);
    });
    document.addEventListener("click", (event) => {
      const link = event.target.closest("[data-sort], [data-page-link], [data-filter-status]");
      if (!link || event.metaKey || event.ctrlKey || event.shiftKey) return;
      event.preventDefault();
      const url = new URL(link.href, window.location.href);
      goTo(url.searchParams);
      const search = filters.querySelector("input[name=q]");
      if (search) search.value = url.searchParams.get("q") || "";
      const sort = filters.querySelector("select[name=sort]");
      if (sort) sort.value = url.searchParams.get("sort") || "attention";
      const dir = filters.querySelector("input[name=dir]");
      if (dir) dir.value = url.searchParams.get("dir") || "asc";
    });
  }

  // --- an instance's page -----------------------------------------------------------

  const formats = {
    at: (r) => when(r.at),
    move: (r) => (r.from || "new") + " → " + (r.to || "-"),
  };

  function renderHistory(history) {
    document.querySelectorAll("[data-part]").forEach((section) => {
      const rows = history[section.dataset.part];
      const table = section.querySelector("table[data-columns]");
      if (!rows || !table) return;
      const columns = table.dataset.columns.split(" ");
      const labels = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
      const body = table.querySelector("tbody");
      body.replaceChildren(...rows.slice().reverse().map((r) => {
        const tr = el("tr");
        columns.forEach((key, i) => {
          const value = formats[key] ? formats[key](r) : (r[key] === null || r[key] === undefined ? "-" : String(r[key]));
          const textual = key === "message" || key === "detail" || key === "comment";
          tr.append(el("td", { "data-label": labels[i], class: textual ? "text" : null }, value));
        });
        return tr;
      }));
      const count = section.querySelector("[data-part-count]");
      if (count) count.textContent = String(rows.length);
      const empty = section.querySelector("[data-empty]");
      if (empty) empty.hidden = rows.length > 0;
      const wrap = section.querySelector("[data-table-wrap]");
      if (wrap) wrap.hidden = rows.length === 0;
    });
  }

  function renderInstance(view) {
    const r = view.instance;
    if (!r) {
      if (body.dataset.status !== "CONFIRMED") window.location.reload();
      return;
    }
    body.dataset.status = r.status;
    document.querySelectorAll("[data-field]").forEach((node) => {
      const name = node.dataset.field;
      let value;
      if (name === "next") value = nextText(r);
      else if (name === "last_login_attempt") value = when(r.last_login_attempt);
      else value = r[name] === null || r[name] === undefined || r[name] === "" ? "-" : String(r[name]);
      if (name === "hint") value = r.hint || "";
      node.textContent = value;
    });
    document.querySelectorAll("[data-hint]").forEach((node) => { node.hidden = !r.hint; });
    document.querySelectorAll(".head [data-badge]").forEach((node) => {
      node.textContent = r.status;
      node.className = "badge s-" + r.status;
    });
    document.querySelectorAll("[data-states]").forEach((node) => {
      node.hidden = !node.dataset.states.split(" ").includes(r.status);
    });
    const h = view.health;
    document.querySelectorAll("[data-health]").forEach((node) => {
      const name = node.dataset.health;
      let value = "-";
      if (h) {
        if (name === "healthy") value = h.healthy ? "yes" : "no";
        else if (name === "identity_verified") value = verdict(h.identity_verified);
        else if (name === "last_check_age") value = age(h.last_check_age);
        else if (name.startsWith("uptime_")) value = pct(h[name]);
        else value = h[name] === null || h[name] === undefined ? "-" : String(h[name]);
      }
      node.textContent = value;
    });
    renderSetAside(view.set_aside);
    renderHistory(view.history);
  }

  // --- polling ------------------------------------------------------------------------

  const stamp = document.querySelector("[data-live-stamp]");
  let inFlight = false;

  async function refresh() {
    if (!liveUrl || inFlight) return;
    inFlight = true;
    try {
      const url = body.dataset.page === "fleet" ? liveUrl + window.location.search : liveUrl;
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) {
        if (stamp) stamp.textContent = "Signed out: reload the page to sign in again.";
        return;
      }
      if (!response.ok) {
        if (stamp) stamp.textContent = "Live updates paused (" + response.status + "); retrying.";
        return;
      }
      const view = await response.json();
      if (body.dataset.page === "fleet") renderFleet(view);
      else renderInstance(view);
      if (stamp) stamp.textContent = "Live · updated " + new Date().toLocaleTimeString();
    } catch (error) {
      if (stamp) stamp.textContent = "Live updates paused (the console is unreachable); retrying.";
    } finally {
      inFlight = false;
    }
  }

  if (liveUrl) {
    setInterval(() => { if (!document.hidden) refresh(); }, pollMs);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    if (stamp) stamp.textContent = "Live · every " + Math.round(pollMs / 100) / 10 + " s";
  }
})();
