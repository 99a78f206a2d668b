// The page's script, served as /static/app.js rather than inline: the Content-Security-Policy
// (default-src 'self') runs no inline script.
const $ = (id) => document.getElementById(id);
let offset = 0, lastQuery = null;

async function api(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (e) {}
    throw new Error(message);
  }
  return response;
}

function tile(src, lines, kind, onClick) {
  const div = document.createElement("div");
  div.className = "tile " + (kind || "");
  const img = document.createElement("img");
  img.src = src; img.alt = lines[0];
  div.appendChild(img);
  for (const line of lines) {
    const cap = document.createElement("div");
    cap.className = "cap"; cap.textContent = line; cap.title = line;
    div.appendChild(cap);
  }
  if (onClick) div.onclick = onClick;
  return div;
}

function clearResults() {
  $("results").replaceChildren();
  $("resultsTitle").hidden = true;
}

function show(querySrc, queryLabel, result) {
  const row = $("results");
  row.replaceChildren();
  // Borders compare labels: only a labelled query (a gallery item) can promise green/red.
  $("resultsTitle").textContent = queryLabel
    ? "Query and its top-K (green: same label as the query, red: another)"
    : "Query and its top-K (the query has no label, so no result is marked right or wrong)";
  $("resultsTitle").hidden = false;
  row.appendChild(tile(querySrc, ["query", queryLabel || "(no label)"], "query"));
  for (const hit of result.results) {
    const kind = queryLabel && hit.label ? (hit.label === queryLabel ? "hit" : "miss") : "";
    row.appendChild(tile(`/items/${hit.id}/image`, [`#${hit.rank}  ${hit.score.toFixed(3)}`, hit.label || "—"],
                         "result " + kind, () => byItem(hit.id, hit.label)));
  }
}

async function byItem(id, label) {
  $("error").textContent = "";
  lastQuery = {id, label};
  try {
    const k = $("k").value;
    const result = (await (await api(`/items/${id}/neighbours?k=${k}`)).json()).queries[0];
    const src = $("attention").checked ? `/items/${id}/attention` : `/items/${id}/image`;
    show(src, label, result);
  } catch (e) {
    clearResults();
    $("error").textContent = e.message;
  }
}

async function byUpload(file) {
  $("error").textContent = "";
  lastQuery = {file};
  try {
    const form = new FormData();
    form.append("images", file, file.name);
    const k = $("k").value;
    const result = (await (await api(`/search?k=${k}`, {method: "POST", body: form})).json()).queries[0];
    let src = URL.createObjectURL(file);
    if ($("attention").checked) {
      const overlay = new FormData();
      overlay.append("images", file, file.name);
      src = URL.createObjectURL(await (await api("/attention", {method: "POST", body: overlay})).blob());
    }
    show(src, "", result);
  } catch (e) {
    clearResults();  // the old results belong to another query: leaving them would pass them off as this one's
    $("error").textContent = e.message;
  }
}

async function loadGallery() {
  try {
    const page = await (await api(`/items?offset=${offset}&limit=24`)).json();
    for (const item of page.items) {
      $("gallery").appendChild(tile(`/items/${item.id}/image`, [`id ${item.id}`, item.label || "—"], "",
                                    () => byItem(item.id, item.label)));
    }
    offset += page.items.length;
    $("more").hidden = offset >= page.total;
  } catch (e) { $("error").textContent = e.message; }
}

async function loadStats() {
  const s = await (await api("/stats")).json();
  $("stats").textContent = `${s.count} images · ${s.dim}-d · ${s.index_type} · checkpoint ${s.checkpoint_sha256.slice(0, 12)}…`;
}

$("file").onchange = (e) => e.target.files[0] && byUpload(e.target.files[0]);
const drop = $("drop");
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) byUpload(e.dataTransfer.files[0]); };
$("more").onclick = loadGallery;
$("attention").onchange = () => lastQuery && (lastQuery.file ? byUpload(lastQuery.file) : byItem(lastQuery.id, lastQuery.label));
loadStats(); loadGallery();
