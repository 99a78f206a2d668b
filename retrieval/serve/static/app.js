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
  $("explain").hidden = true;
}

// The overlay on the query: Grad-CAM of the embedding (where it looks), or, when asked, the raw
// attention gates, which gate a residual term and are labelled so (docs/training.md §2b).
function overlayKind() {
  return $("gates").checked ? "gates" : "gradcam";
}

// Where the score of a (query, result) pair comes from (/explain): a map on each image on one
// colour scale centred on zero, red = adds to the cosine, blue = takes away (retrieval/explain.py).
function mapColour(v, scale) {
  const t = Math.max(-1, Math.min(1, v / scale));
  return t >= 0 ? [220, 30, 30, Math.round(200 * t)] : [30, 80, 220, Math.round(-200 * t)];
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not load " + src));
    img.src = src;
  });
}

async function drawMap(canvas, src, map, scale) {
  const ctx = canvas.getContext("2d");
  ctx.drawImage(await loadImage(src), 0, 0, canvas.width, canvas.height);
  const h = map.length, w = map[0].length;
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const pixels = small.getContext("2d").createImageData(w, h);
  map.flat().forEach((v, i) => pixels.data.set(mapColour(v, scale), 4 * i));
  small.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

async function explain(querySrc, hit) {
  const panel = $("explain");
  $("explainText").textContent = "explaining…";
  panel.hidden = false;
  try {
    let response;
    if (lastQuery && lastQuery.file) {
      const form = new FormData();
      form.append("images", lastQuery.file, lastQuery.file.name);
      response = await api(`/explain?result=${hit.id}`, {method: "POST", body: form});
    } else {
      response = await api(`/items/${hit.id}/explain?query_item=${lastQuery.id}`);
    }
    const e = await response.json();
    const scale = Math.max(...e.query_map.flat().map(Math.abs), ...e.result_map.flat().map(Math.abs)) || 1;
    await drawMap($("explainQuery"), querySrc, e.query_map, scale);
    await drawMap($("explainResult"), `/items/${hit.id}/image`, e.result_map, scale);
    const parts = Object.entries(e.shares).map(([b, v]) => `${b} ${v.toFixed(3)} (${e.exact[b] ? "exact" : "first-order"})`);
    $("explainText").textContent = `query vs #${hit.rank} (id ${hit.id}): cosine ${e.score.toFixed(3)} = ${parts.join(" + ")}`;
    $("explainSearch").onclick = () => byItem(hit.id, hit.label);
  } catch (err) {
    $("explainText").textContent = "";
    panel.hidden = true;
    $("error").textContent = err.message;
  }
}

function show(querySrc, queryLabel, result, plainSrc) {
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
                         "result " + kind, () => explain(plainSrc || querySrc, hit)));
  }
}

async function byItem(id, label) {
  $("error").textContent = "";
  lastQuery = {id, label};
  try {
    const k = $("k").value;
    const result = (await (await api(`/items/${id}/neighbours?k=${k}`)).json()).queries[0];
    const plain = `/items/${id}/image`;
    const src = $("attention").checked ? `/items/${id}/attention?kind=${overlayKind()}` : plain;
    $("explain").hidden = true;
    show(src, label, result, plain);
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
    const plain = URL.createObjectURL(file);
    let src = plain;
    if ($("attention").checked) {
      const overlay = new FormData();
      overlay.append("images", file, file.name);
      src = URL.createObjectURL(await (await api(`/attention?kind=${overlayKind()}`,
                                                 {method: "POST", body: overlay})).blob());
    }
    $("explain").hidden = true;
    show(src, "", result, plain);
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
const rerun = () => lastQuery && (lastQuery.file ? byUpload(lastQuery.file) : byItem(lastQuery.id, lastQuery.label));
$("attention").onchange = rerun;
$("gates").onchange = rerun;
loadStats(); loadGallery();
