// fetalkit's page: plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ shared helpers

function showError(panel, message) {
  const el = $(`${panel}-error`);
  el.textContent = message || "";
  el.hidden = !message;
}

// POST one file (+ text fields) as multipart/form-data; resolves to {status, body}.
function upload(url, file, fields, onProgress) {
  return new Promise((resolve) => {
    const form = new FormData();
    for (const [key, value] of Object.entries(fields || {})) form.append(key, value);
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.responseType = "json";
    if (onProgress) xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => resolve({ status: xhr.status, body: xhr.response || { error: `HTTP ${xhr.status}` } });
    xhr.onerror = () => resolve({ status: 0, body: { error: "the server cannot be reached; is fetalkit serve running?" } });
    xhr.send(form);
  });
}

async function getJson(url) {
  try {
    const response = await fetch(url, { cache: "no-store" });
    const body = await response.json();
    return { status: response.status, body };
  } catch (e) {
    return { status: 0, body: { error: "the server cannot be reached; is fetalkit serve running?" } };
  }
}

// Poll a job until it is done; onProgress(job) on every poll. Throws Error(message) when it fails.
async function waitForJob(id, onProgress) {
  for (;;) {
    const { status, body } = await getJson(`/api/jobs/${id}`);
    if (status !== 200) throw new Error(body.error);
    onProgress(body);
    if (body.state === "done") return body;
    if (body.state === "failed") throw new Error(body.error);
    await sleep(250);
  }
}

function setProgress(panel, fraction, text) {
  const bar = $(`${panel}-progress`);
  bar.hidden = fraction === undefined;
  if (fraction === null) bar.removeAttribute("value"); // indeterminate
  else if (fraction !== undefined) bar.value = fraction;
  $(`${panel}-progress-text`).textContent = text || "";
}

function jobText(job) {
  if (job.state === "queued") return "waiting for a free worker";
  if (job.total) return `frame ${job.done} of ${job.total}`;
  return job.done ? `${job.done} frames` : "working";
}

function dropZone(zoneId, inputId, onFiles) {
  const zone = $(zoneId), input = $(inputId);
  input.addEventListener("change", () => { if (input.files.length) onFiles([...input.files]); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) onFiles([...e.dataTransfer.files]);
  });
}

function fillSelect(id, values, selected) {
  const select = $(id);
  select.replaceChildren(...values.map((v) => new Option(v, v, v === selected, v === selected)));
}

function fillClasses(id, classes) {
  const box = $(id);
  for (const name of classes) {
    const label = document.createElement("label");
    const check = Object.assign(document.createElement("input"), { type: "checkbox", value: name, checked: true });
    label.append(check, ` ${name.replace("_", " ")}`);
    box.append(label);
  }
}

function chosenClasses(id) {
  return [...$(id).querySelectorAll("input:checked")].map((c) => c.value).join(",");
}

function drawDataUrl(canvas, url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      canvas.getContext("2d").drawImage(img, 0, 0);
      resolve();
    };
    img.onerror = reject;
    img.src = url;
  });
}

function saveText(name, text, type) {
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(new Blob([text], { type })), download: name,
  });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// ------------------------------------------------------------------ masking a file

// Upload a file as a job of this panel, show its progress; the finished job, or null (error shown).
async function runJob(panel, url, file, fields) {
  showError(panel, "");
  $(`${panel}-result`).hidden = true;
  setProgress(panel, 0, "uploading");
  const { status, body } = await upload(url, file, fields,
    (f) => setProgress(panel, f, `uploading ${Math.round(100 * f)} %`));
  try {
    if (status !== 202) throw new Error(body.error);
    const job = await waitForJob(body.id, (j) => setProgress(panel, j.total ? j.done / j.total : null, jobText(j)));
    setProgress(panel, 1, "done");
    return job;
  } catch (e) {
    setProgress(panel, undefined);
    showError(panel, e.message);
    return null;
  }
}

function offerDownload(linkId, job) {
  const link = $(linkId);
  link.href = job.download;
  link.download = job.result.output_name;
  link.textContent = `Download ${job.result.output_name}`;
  // the machine audit of this output (fetalkit audit): what it still reveals, if anything
  const audit = job.result.audit;
  const verdict = $(`${linkId}-audit`);
  if (verdict && audit) {
    verdict.textContent = `${audit.clean ? "Audit: clean." : "Audit: LEAK. Do not share this file."} ${audit.summary}`;
    verdict.className = audit.clean ? "audit audit-clean" : "audit audit-leak";
  }
}

async function maskFile(file) {
  const job = await runJob("mask", "/api/mask", file,
    { classes: chosenClasses("mask-classes"), style: $("mask-style").value });
  if (!job) return;
  const r = job.result;
  $("mask-summary").textContent = `${job.name}: ${r.frames} frames masked at ${r.fps} frames/s (rule ${r.rule}); ` +
    `${r.frames_masked} with a mask, ${r.frames_held} held by the rule, ${r.frames_fail_safe} blanked by the fail-safe.` +
    (r.notes && r.notes.length ? ` Note: ${r.notes.join("; ")}.` : "");
  offerDownload("mask-download", job);
  const canvas = $("mask-preview");
  if (r.preview) {
    await drawDataUrl(canvas, r.preview);
    canvas.dataset.frame = r.preview_frame;
    $("mask-preview-caption").textContent = `frame ${r.preview_frame} of the masked file (the most masked one)`;
  } else {
    canvas.width = canvas.height = 1;
    $("mask-preview-caption").textContent = "nothing was masked in this file";
  }
  $("mask-result").hidden = false;
}

// ------------------------------------------------------------------ live masking

// gen: bumped by every blank, so a frame still being decoded then is dropped, never drawn over the black.
const live = { ws: null, ended: false, camera: null, video: null, grab: null, watchdog: null, frames: 0, status: null, gen: 0 };
const LIVE_STALL_MS = 3000;

function liveState(text) { $("live-state").textContent = text; }

// The fail-safe of the page: a black view, never the last (or any unmasked) frame.
function blankLive(reason) {
  live.gen += 1;
  const canvas = $("live-canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (reason) liveState(reason);
}

function armWatchdog() {
  clearTimeout(live.watchdog);
  live.watchdog = setTimeout(() => blankLive(`no frame for ${LIVE_STALL_MS / 1000} s: view blanked`), LIVE_STALL_MS);
}

function stopCamera() {
  if (live.camera) live.camera.getTracks().forEach((t) => t.stop());
  live.camera = live.video = null;
}

function sendCameraFrame() {
  if (!live.video || !live.ws || live.ws.readyState !== WebSocket.OPEN) return;
  const v = live.video;
  if (!v.videoWidth) return setTimeout(sendCameraFrame, 50);
  live.grab.width = v.videoWidth;
  live.grab.height = v.videoHeight;
  live.grab.getContext("2d").drawImage(v, 0, 0);  // off-screen: never shown
  live.grab.toBlob((blob) => blob && live.ws && live.ws.readyState === WebSocket.OPEN && live.ws.send(blob),
    "image/jpeg", 0.85);
}

async function drawLiveFrame(blob, gen) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (e) {
    return blankLive("undecodable frame: view blanked");
  }
  if (gen !== live.gen) return; // blanked (fault, stop) while this frame was decoded
  const canvas = $("live-canvas");
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  live.frames += 1;
  const s = live.status || {};
  $("live-frames").textContent = String(live.frames);
  $("live-fps").textContent = s.fps !== undefined ? s.fps.toFixed(1) : "–";
  $("live-hold").textContent = s.fail_safe ? "FAIL-SAFE (sector blanked)" :
    s.hold === "held" ? `held (${s.held} box${s.held === 1 ? "" : "es"})` : (s.hold || "–");
  liveState(s.total ? `playing ${s.frame + 1} / ${s.total}` : "streaming");
}

function onLiveMessage(event) {
  if (typeof event.data === "string") {
    const s = JSON.parse(event.data);
    if (s.error) {
      blankLive("fault: view blanked");
      showError("live", s.error);
      if (live.video) setTimeout(sendCameraFrame, 100);
      return;
    }
    if (s.end) {
      live.ended = true;
      clearTimeout(live.watchdog);
      liveState(`finished: ${s.frames} frames`);
      return;
    }
    live.status = s;
    return;
  }
  armWatchdog();
  drawLiveFrame(event.data, live.gen).then(() => { if (live.video) sendCameraFrame(); });
}

function startLive(start) {
  stopLive();
  showError("live", "");
  live.ended = false;
  live.frames = 0;
  live.status = null;
  blankLive("connecting");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/live`);
  ws.binaryType = "blob";
  live.ws = ws;
  ws.onopen = () => {
    ws.send(JSON.stringify({ ...start, classes: chosenClasses("live-classes"), style: $("live-style").value }));
    liveState("started");
    armWatchdog();
    if (live.video) sendCameraFrame();
  };
  ws.onmessage = onLiveMessage;
  ws.onerror = () => blankLive("connection error: view blanked");
  ws.onclose = () => {
    clearTimeout(live.watchdog);
    if (!live.ended) blankLive("disconnected: view blanked");
    if (live.ws === ws) live.ws = null;
    stopCamera();
    $("live-stop").disabled = true;
  };
  $("live-stop").disabled = false;
}

function stopLive() {
  live.ended = true;
  clearTimeout(live.watchdog);
  if (live.ws) live.ws.close();
  live.ws = null;
  stopCamera();
  blankLive("stopped");
  $("live-stop").disabled = true;
}

async function startCamera() {
  showError("live", "");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return showError("live", "this browser gives no camera access here: open the page as 127.0.0.1 or localhost, or behind HTTPS");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    return showError("live", `no camera: ${e.message}`);
  }
  startLive({ source: "camera" });
  live.camera = stream;
  live.video = Object.assign(document.createElement("video"), { muted: true, playsInline: true, srcObject: stream });
  live.grab = document.createElement("canvas");
  await live.video.play();
  sendCameraFrame();
}

async function playLiveFile(file) {
  stopLive();
  showError("live", "");
  liveState("uploading");
  const { status, body } = await upload("/api/live/files", file, {});
  if (status !== 200) {
    liveState("stopped");
    return showError("live", body.error);
  }
  startLive({ source: "file", upload: body.upload });
}

// ------------------------------------------------------------------ biometry

const csvByTask = { head: { header: "", lines: [] }, aop: { header: "", lines: [] } };

function bioTask() { return document.querySelector("input[name=bio-task]:checked").value; }

function planeText(r) {
  if (!r.plane_ok) return "";
  return `${r.plane_ok === "true" ? "yes" : "no (measured anyway)"} (${r.plane_score})`;
}

function addRow(task, body) {
  const r = body.row;
  const cells = task === "head"
    ? [[r.filename, "filename"], [r.hc_mm || r.hc_px, r.hc_mm ? "hc_mm" : "hc_px"], [r.bpd_mm || r.bpd_px, "bpd"],
       [r.ofd_mm || r.ofd_px, "ofd"], [r.units, "units"], [r.pixel_mm, "pixel_mm"], [body.pixel_mm_source || "none", "source"],
       [planeText(r), "plane"]]
    : [[r.filename, "filename"], [r.aop_deg, "aop_deg"], [planeText(r), "plane"]];
  const tr = document.createElement("tr");
  for (const [text, col] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    td.dataset.col = col;
    tr.append(td);
  }
  const table = $(`bio-table-${task}`);
  table.tBodies[0].append(tr);
  table.hidden = false;
  const [header, ...lines] = body.csv.trim().split(/\r?\n/);
  csvByTask[task].header = header;
  csvByTask[task].lines.push(...lines);
  $("bio-csv").disabled = $("bio-clear").disabled = false;
}

async function measureFiles(files) {
  showError("bio", "");
  const task = bioTask();
  const fields = task === "head" ? { pixel_mm: $("bio-pixel-mm").value }
    : { caudal_end: $("bio-caudal-end").value, opening: $("bio-opening").value };
  if ($("bio-force").checked) fields.force = "true";
  const errors = [];
  for (const file of files) {
    const { status, body } = await upload(`/api/biometry/${task}`, file, fields);
    if (body.overlay) {
      $("bio-overlay").src = body.overlay;
      $("bio-overlay").hidden = false;
    }
    if (status === 200) addRow(task, body);
    else errors.push(body.error);
  }
  showError("bio", errors.join("\n"));
}

function downloadCsv() {
  const task = bioTask();
  const { header, lines } = csvByTask[task];
  if (!lines.length) return;
  saveText(task === "head" ? "head_measurements.csv" : "aop_measurements.csv",
    [header, ...lines].join("\r\n") + "\r\n", "text/csv");
}

function clearMeasurements() {
  for (const task of ["head", "aop"]) {
    csvByTask[task] = { header: "", lines: [] };
    $(`bio-table-${task}`).tBodies[0].replaceChildren();
    $(`bio-table-${task}`).hidden = true;
  }
  $("bio-overlay").hidden = true;
  $("bio-csv").disabled = $("bio-clear").disabled = true;
}

// ------------------------------------------------------------------ de-identification

async function deidFile(file) {
  const job = await runJob("deid", "/api/deid", file, {});
  if (!job) return;
  const r = job.result;
  $("deid-summary").textContent = `${job.name}: ${r.removed.length} attributes removed, ${r.emptied.length} emptied, ` +
    `${r.replaced.length} replaced; ${r.uids_remapped} UIDs remapped; ${r.private_tags_removed} private tags removed; ` +
    `${r.overlay_px_removed} burned-in pixels removed in ${r.frames} frame${r.frames === 1 ? "" : "s"}; ` +
    `Burned In Annotation ${r.burned_in_annotation}.`;
  offerDownload("deid-download", job);
  $("deid-regions").replaceChildren(...(r.burned_in_regions.length ? r.burned_in_regions.map((b) =>
    Object.assign(document.createElement("li"), { textContent: `x ${b.x}, y ${b.y}: ${b.w} × ${b.h} px (${b.px} px of text)` }))
    : [Object.assign(document.createElement("li"), { textContent: "none found" })]));
  const dl = $("deid-attributes");
  dl.replaceChildren();
  for (const [what, names] of [["removed", r.removed], ["emptied", r.emptied], ["replaced", r.replaced]]) {
    dl.append(Object.assign(document.createElement("dt"), { textContent: `${what} (${names.length})` }),
      Object.assign(document.createElement("dd"), { textContent: names.join(", ") || "none" }));
  }
  $("deid-result").hidden = false;
}

// ------------------------------------------------------------------ start

function showTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  for (const panel of document.querySelectorAll("[role=tabpanel]")) panel.hidden = panel.id !== `tab-${name}`;
}

async function init() {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  blankLive();
  dropZone("mask-drop", "mask-file", (files) => maskFile(files[0]));
  dropZone("bio-drop", "bio-file", measureFiles);
  dropZone("deid-drop", "deid-file", (files) => deidFile(files[0]));
  $("live-file").addEventListener("change", (e) => { const f = e.target.files[0]; e.target.value = ""; if (f) playLiveFile(f); });
  $("live-camera").addEventListener("click", startCamera);
  $("live-stop").addEventListener("click", stopLive);
  $("bio-csv").addEventListener("click", downloadCsv);
  $("bio-clear").addEventListener("click", clearMeasurements);
  for (const radio of document.querySelectorAll("input[name=bio-task]")) {
    radio.addEventListener("change", () => {
      $("bio-head-options").hidden = bioTask() !== "head";
      $("bio-aop-options").hidden = bioTask() !== "aop";
    });
  }
  const { status, body } = await getJson("/api/info");
  if (status !== 200) return showError("mask", body.error);
  $("version").textContent = body.version;
  $("max-upload").textContent = String(body.max_upload_mb);
  for (const panel of ["mask", "live"]) {
    fillClasses(`${panel}-classes`, body.classes);
    fillSelect(`${panel}-style`, body.styles, "fill");
  }
  fillSelect("bio-caudal-end", body.caudal_ends, "right");
  fillSelect("bio-opening", body.openings, "counterclockwise");
  document.body.dataset.ready = "true";
}

init();
