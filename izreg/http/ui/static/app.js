// izreg's browse page. Plain JavaScript, no library, no build step.
//
// Rules this file keeps:
// - The access key lives in sessionStorage only (this tab); it is sent as
//   "Authorization: Bearer" on fetch() calls to this origin, never put in a
//   URL, a cookie or localStorage.
// - Every string that comes from the registry (names, tags, annotations,
//   error messages) reaches the page through textContent or a form value,
//   never through innerHTML: it is always text, never markup.
// - The server's Content-Security-Policy forbids inline script, so all
//   behaviour is wired up here with addEventListener.
"use strict";

(function () {
  const KEY = "izreg.accessKey";
  const PAGE = 100;
  const KINDS = {
    "image": "image",
    "index": "index",
    "helm-chart": "Helm chart",
    "signature": "signature",
    "sbom": "SBOM",
    "artifact": "artifact",
  };

  const $ = (id) => document.getElementById(id);
  let generation = 0; // bumped on every navigation: late answers of an old view are dropped
  let manifests = []; // the loaded manifests of the open repository

  // -- DOM helpers (text only) ------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else if (name in node) node[name] = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function message(text, kind) {
    const box = $("message");
    box.textContent = text || "";
    box.className = kind || "";
    box.hidden = !text;
  }

  // -- formatting --------------------------------------------------------------

  function humanSize(bytes) {
    if (typeof bytes !== "number" || !isFinite(bytes)) return "?";
    if (bytes < 1024) return bytes + " B";
    const units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let value = bytes;
    let unit = -1;
    do {
      value /= 1024;
      unit += 1;
    } while (value >= 1024 && unit < units.length - 1);
    return (value < 10 ? value.toFixed(1) : String(Math.round(value))) + " " + units[unit];
  }

  function sizeCell(bytes, extra) {
    const exact = typeof bytes === "number" ? bytes.toLocaleString("en-US") + " bytes" : "";
    return el("span", {className: "size", title: extra ? exact + "; " + extra : exact}, humanSize(bytes));
  }

  const relativeFormat = new Intl.RelativeTimeFormat("en", {numeric: "auto"});
  const STEPS = [["second", 60], ["minute", 60], ["hour", 24], ["day", 30], ["month", 12], ["year", Infinity]];

  function relative(ms) {
    let value = (ms - Date.now()) / 1000;
    for (const [unit, size] of STEPS) {
      if (Math.abs(value) < size) return relativeFormat.format(Math.round(value), unit);
      value /= size;
    }
    return "";
  }

  function exact(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function timeCell(iso, never) {
    const ms = typeof iso === "string" ? Date.parse(iso) : NaN;
    if (isNaN(ms)) return el("span", {className: "never"}, never || "never");
    return el("time", {dateTime: iso, title: exact(ms)}, relative(ms));
  }

  function shortDigest(digest) {
    const [algorithm, hex] = String(digest).split(":");
    return hex ? algorithm + ":" + hex.slice(0, 12) : String(digest);
  }

  function shortName(name, account) {
    return account && name.startsWith(account + "/") ? name.slice(account.length + 1) : name;
  }

  // -- the API -----------------------------------------------------------------

  class KeyRefused extends Error {}

  function repositoryPath(name) {
    return "/v2/" + name.split("/").map(encodeURIComponent).join("/");
  }

  function errorText(answer) {
    const error = answer.body && Array.isArray(answer.body.errors) ? answer.body.errors[0] : null;
    const text = error ? String(error.message || error.code || "") : "";
    return text || "the registry answered HTTP " + answer.status;
  }

  async function call(method, path, headers) {
    const key = sessionStorage.getItem(KEY);
    if (!key) throw new KeyRefused("");
    let response;
    try {
      response = await fetch(path, {
        method: method,
        headers: Object.assign({"Authorization": "Bearer " + key, "Accept": "application/json"}, headers || {}),
        credentials: "omit",
        cache: "no-store",
        redirect: "error",
        referrerPolicy: "no-referrer",
      });
    } catch (error) {
      throw new Error("cannot reach the registry (" + error.message + ")");
    }
    let body = null;
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
    }
    const answer = {status: response.status, ok: response.ok, body: body, headers: response.headers};
    if (response.status === 401) throw new KeyRefused(errorText(answer));
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      throw new Error("too many failed attempts from this address" + (wait ? "; try again in " + wait + " s" : ""));
    }
    return answer;
  }

  function nextPage(answer) {
    const link = answer.headers.get("Link") || "";
    const match = /<([^>]*)>\s*;\s*rel="?next"?/.exec(link);
    return match && match[1].startsWith("/v2/") ? match[1] : null;
  }

  // -- login -------------------------------------------------------------------

  function showLogin(error) {
    generation += 1;
    sessionStorage.removeItem(KEY);
    for (const id of ["who", "repositories", "repository", "message"]) show(id, false);
    show("login", true);
    $("login-error").textContent = error || "";
    show("login-error", Boolean(error));
    $("key").focus();
  }

  function refused(error) {
    const reason = error.message ? ": " + error.message : "";
    showLogin("The registry refused this access key" + reason + ". Paste a valid access key of your account.");
  }

  function failed(error) {
    if (error instanceof KeyRefused) refused(error);
    else message(String(error.message || error), "error");
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key");
    const key = input.value.trim();
    input.value = "";
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    show("login", false);
    route();
  });

  $("logout").addEventListener("click", () => {
    showLogin("");
    if (location.hash) history.replaceState(null, "", location.pathname);
  });

  $("refresh").addEventListener("click", () => route());

  function setAccount(account) {
    $("account").textContent = account || "";
    show("who", true);
  }

  // -- repositories --------------------------------------------------------------

  async function showRepositories() {
    const mine = ++generation;
    message("");
    show("repository", false);
    $("repository-table").tBodies[0].replaceChildren();
    show("repositories-empty", false);
    show("repositories-more", false);
    await loadRepositories("/v2/_izreg/repositories?n=" + PAGE, mine);
  }

  async function loadRepositories(path, mine) {
    const answer = await call("GET", path);
    if (mine !== generation) return;
    if (!answer.ok) throw new Error(errorText(answer));
    const account = answer.body.account;
    setAccount(account);
    const rows = answer.body.repositories.map((repo) => el("tr", {dataset: {name: repo.name}},
      el("td", {dataset: {label: "Repository"}},
        el("a", {href: "#/r/" + repo.name, className: "repo-link", title: repo.name}, shortName(repo.name, account))),
      el("td", {dataset: {label: "Tags"}, className: "tags-count"}, String(repo.tags)),
      el("td", {dataset: {label: "Manifests"}}, String(repo.manifests)),
      el("td", {dataset: {label: "Size"}},
        sizeCell(repo.size, (repo.unique_size || 0).toLocaleString("en-US") + " bytes not shared with your other repositories")),
      el("td", {dataset: {label: "Last push"}}, timeCell(repo.last_push))));
    const body = $("repository-table").tBodies[0];
    body.append(...rows);
    $("push-example").textContent = "docker push " + location.host + "/" + account + "/NAME:TAG";
    show("repositories-empty", body.rows.length === 0);
    show("repository-table", body.rows.length > 0);
    const next = nextPage(answer);
    const more = $("repositories-more");
    more.hidden = !next;
    more.onclick = next ? () => loadRepositories(next, generation).catch(failed) : null;
    show("repositories", true);
  }

  // -- one repository --------------------------------------------------------------

  async function showRepository(name) {
    const mine = ++generation;
    message("");
    show("repositories", false);
    $("repository-name").textContent = name;
    manifests = [];
    renderManifests(name, false);
    show("repository", true);
    await loadManifests(name, repositoryPath(name) + "/_izreg/manifests?n=" + PAGE, mine);
  }

  async function loadManifests(name, path, mine) {
    const answer = await call("GET", path);
    if (mine !== generation) return;
    if (answer.status === 404) {
      setAccount(name.split("/")[0]);
      message("There is no repository " + name + " (any more): " + errorText(answer), "error");
      show("manifests-empty", false);
      show("manifest-table", false);
      return;
    }
    if (!answer.ok) throw new Error(errorText(answer));
    setAccount(name.split("/")[0]);
    manifests = manifests.concat(answer.body.manifests);
    renderManifests(name, true);
    const next = nextPage(answer);
    const more = $("manifests-more");
    more.hidden = !next;
    more.onclick = next ? () => loadManifests(name, next, generation).catch(failed) : null;
  }

  function renderManifests(name, loaded) {
    const sorted = manifests.slice().sort((a, b) => String(b.pushed).localeCompare(String(a.pushed)));
    $("manifest-table").tBodies[0].replaceChildren(...sorted.flatMap((m) => manifestRow(name, m)));
    show("manifest-table", sorted.length > 0);
    show("manifests-empty", loaded && sorted.length === 0);
    show("manifests-more", false);
  }

  function manifestRow(name, m) {
    const tags = el("td", {dataset: {label: "Tags"}, className: "tags"});
    for (const tag of m.tags || []) {
      tags.append(el("span", {className: "tag"},
        el("span", {className: "tag-name"}, tag),
        el("button", {type: "button", className: "delete-tag", title: "Delete tag " + tag,
          "aria-label": "Delete tag " + tag, dataset: {tag: tag},
          onclick: () => remove(name, tag, "tag " + tag).catch(failed)}, "×")));
    }
    if (!(m.tags || []).length) tags.append(el("span", {className: "never"}, "untagged"));

    const kindText = el("div", {}, KINDS[m.kind] || String(m.kind || "artifact"));
    if (m.subject) kindText.append(el("small", {title: m.subject}, "for " + shortDigest(m.subject)));
    if (m.artifactType) kindText.append(el("small", {className: "artifact-type"}, m.artifactType));
    const kind = el("td", {dataset: {label: "Kind"}, className: "kind"}, kindText);

    const devices = m.devices || {count: 0};
    const devicesText = el("div", {});
    if (devices.count) {
      devicesText.append(devices.count === 1 ? "1 device" : devices.count + " devices");
      if (devices.last_pulled) devicesText.append(el("small", {}, "last ", timeCell(devices.last_pulled)));
    } else {
      devicesText.append(el("span", {className: "never"}, "none"));
    }
    const devicesCell = el("td", {dataset: {label: "Devices"}, className: "devices"}, devicesText);

    const details = el("td", {colSpan: 9, className: "details"});
    const command = pullCommand(name, m);
    if (command) {
      const input = el("input", {type: "text", readOnly: true, value: command, className: "command",
        "aria-label": "Pull command", spellcheck: false});
      const button = el("button", {type: "button", className: "copy"}, "Copy");
      button.addEventListener("click", () => copy(input, button));
      details.append(el("div", {className: "pull"}, input, button));
    }
    const annotations = el("dl", {className: "annotations"});
    for (const [key, value] of Object.entries(m.annotations || {})) {
      annotations.append(el("div", {}, el("dt", {}, key), el("dd", {}, String(value))));
    }
    if (annotations.childElementCount) details.append(annotations);

    const row = el("tr", {className: "manifest", dataset: {digest: m.digest}},
      tags,
      el("td", {dataset: {label: "Digest"}}, el("code", {className: "digest", title: m.digest}, shortDigest(m.digest))),
      kind,
      el("td", {dataset: {label: "Platforms"}, className: "platforms"}, (m.platforms || []).join(", ") || "—"),
      el("td", {dataset: {label: "Size"}}, sizeCell(m.size)),
      el("td", {dataset: {label: "Pushed"}}, timeCell(m.pushed, "unknown")),
      el("td", {dataset: {label: "Last pulled"}}, timeCell(m.last_pulled)),
      devicesCell,
      el("td", {className: "actions"},
        el("button", {type: "button", className: "delete-manifest danger", title: "Delete manifest " + m.digest,
          onclick: () => remove(name, m.digest, "manifest " + shortDigest(m.digest)).catch(failed)}, "Delete")));
    if (!details.childElementCount) return [row];
    row.classList.add("has-details");
    return [row, el("tr", {className: "details", dataset: {detailsOf: m.digest}}, details)];
  }

  function pullCommand(name, m) {
    const tag = (m.tags || [])[0];
    const host = location.host;
    if (m.kind === "helm-chart") {
      const plain = location.protocol === "http:" ? " --plain-http" : "";
      return tag ? "helm pull oci://" + host + "/" + name + " --version " + tag + plain
        : "helm pull oci://" + host + "/" + name + "@" + m.digest + plain;
    }
    if (m.kind === "image" || m.kind === "index") {
      return "docker pull " + host + "/" + name + (tag ? ":" + tag : "@" + m.digest);
    }
    return null;
  }

  async function copy(input, button) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(input.value);
      } else {
        input.select();
        if (!document.execCommand("copy")) throw new Error("copy refused");
      }
      button.textContent = "Copied";
    } catch (error) {
      input.select();
      button.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  }

  // -- delete ------------------------------------------------------------------------

  function ask(title, text, ok) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = ok;
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-ok").onclick = $("confirm-cancel").onclick = dialog.oncancel = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      dialog.oncancel = () => done(false);
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  async function remove(name, reference, label) {
    const what = label + " of " + name;
    const consequence = label.startsWith("tag ")
      ? "The manifest stays, reachable by its digest and any other tag."
      : "Every tag that points to it goes too.";
    if (!await ask("Delete " + label + "?", "Delete " + what + "? " + consequence, "Delete")) return;
    const path = repositoryPath(name) + "/manifests/" + encodeURIComponent(reference).replace("%3A", ":");
    let answer = await call("DELETE", path);
    if (answer.status === 409) {
      const why = errorText(answer);
      if (!await ask("In use: delete anyway?", why, "Delete anyway")) {
        message("Kept " + what + ": " + why, "warning");
        return;
      }
      answer = await call("DELETE", path, {"Izreg-Force-Delete": "true"});
    }
    if (answer.ok) {
      message("Deleted " + what + ".", "ok");
    } else {
      message("Could not delete " + what + ": " + errorText(answer), "error");
      return;
    }
    const mine = ++generation;
    manifests = [];
    await loadManifests(name, repositoryPath(name) + "/_izreg/manifests?n=" + PAGE, mine);
  }

  // -- navigation ------------------------------------------------------------------------

  function route() {
    if (!sessionStorage.getItem(KEY)) {
      showLogin("");
      return;
    }
    show("login", false);
    const match = /^#\/r\/(.+)$/.exec(location.hash);
    const work = match ? showRepository(decodeURIComponent(match[1])) : showRepositories();
    work.catch(failed);
  }

  window.addEventListener("hashchange", route);
  route();
})();
